"""Run one benchmark step in a fresh process."""

from __future__ import annotations


def in_child(fn, *args):
    """`fn(*args)` in a spawned process: the service's multi-process metrics (and the GPU) are per process,
    so several service runs in one benchmark each need their own."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()
