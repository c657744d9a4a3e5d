"""Per-worker training: the loop, DDP/DeepSpeed strategies, checkpoints and sessions.

`ft_dist.train.loop.train(cfg, session, tracker)` runs one member on one worker; it works
without Ray (one process, or torch.distributed env vars) and under Ray Train (worker.py).
"""
