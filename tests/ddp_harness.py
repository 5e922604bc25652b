"""Run a test's DDP worker in two spawned gloo processes; returns {rank: result}."""
from __future__ import annotations

import socket

import torch.multiprocessing as mp


def run_two_gloo_workers(worker) -> dict:
    """`worker(rank, world, port, queue)` puts (rank, result) on the queue."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return got
