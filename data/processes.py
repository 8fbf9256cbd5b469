"""How data worker processes start: DataLoader workers and data.prepare's pool.

A forked child inherits the parent's memory but only the forking thread: a thread pool the
parent left behind is there without its threads. Once the parent has decoded a video,
PyAV keeps a per-thread swscale context with slice threads, and a forked child that converts a
frame then deadlocks (``avpriv_slicethread_free``); measured with PyAV 12.3 and 18.1 (16.1 and
17.0 did not hang). So workers start by ``forkserver`` (the default: children forked from a
fresh server that has only imported the data modules, no decoding) or ``spawn`` (a fresh
interpreter each, slower to start); ``fork`` stays available for a parent known to have run no
threaded code."""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext
from typing import Any

START_METHODS = ("forkserver", "spawn", "fork")
# What a fork server imports before it forks workers (only while it is not yet running): the modules
# whose objects the workers unpickle, so a worker starts without importing torch itself. Importing
# runs no decoding, so the server holds no swscale threads.
FORKSERVER_PRELOAD = ["__main__", "data.datamodule", "data.prepare.writer"]


def check_start_method(key: str, method: Any) -> None:
    """Raise ValueError naming ``key`` when ``method`` is not a process start method of this platform."""
    methods = [name for name in START_METHODS if name in multiprocessing.get_all_start_methods()]
    if method not in methods:
        raise ValueError(f"{key}={method!r}: must be a process start method of this platform ({', '.join(methods)})")


def worker_context(method: str) -> BaseContext:
    """The multiprocessing context that starts workers by ``method``; a fork server preloads :data:`FORKSERVER_PRELOAD`."""
    check_start_method("start method", method)
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(FORKSERVER_PRELOAD)
    return context
