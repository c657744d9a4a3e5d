"""Run a test function in N real gloo processes (torch.multiprocessing, no Ray)."""

from __future__ import annotations

import os
import socket

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
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_workers(fn, world_size: int, *args) -> None:
    """Start ``world_size`` processes running ``fn(rank, world_size, *args)``; any exception
    in a worker fails the caller with that worker's traceback."""
    os.environ["OMP_NUM_THREADS"] = "1"
    mp.spawn(_entry, args=(world_size, free_port(), fn, args), nprocs=world_size, join=True)
