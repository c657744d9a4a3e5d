"""Run a test function in N real gloo processes (torch.multiprocessing, no Ray)."""

from __future__ import annotations

import gc
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, fn, args: tuple) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    try:
        fn(rank, world_size, *args)
    except BaseException:
        if dist.is_initialized():  # no barrier: the other ranks may never reach it
            dist.destroy_process_group()
        raise
    leave_process_group()
    # Success: end the process here. Letting the interpreter finalize would destroy
    # whatever torch objects are still alive (gloo work objects holding tensors) while
    # Python is half torn down, which aborts the process ("terminate called without an
    # active exception") after the test already passed. Failures still go through
    # mp.spawn's normal path above, so their traceback reaches the parent.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def leave_process_group() -> None:
    """Free every object that still references the group (DDP reducers, pending work)
    while it is alive, wait for all ranks, then destroy it: no rank tears down the
    rendezvous store while another still talks to it."""
    gc.collect()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def run_workers(fn, world_size: int, *args) -> None:
    """Start ``world_size`` processes running ``fn(rank, world_size, *args)``; any exception
    in a worker fails the caller with that worker's traceback."""
    os.environ["OMP_NUM_THREADS"] = "1"
    mp.spawn(_entry, args=(world_size, free_port(), fn, args), nprocs=world_size, join=True)
