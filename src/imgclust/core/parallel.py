"""Process-pool maps with a progress bar, helper processes, and batching helpers for streaming over
large arrays."""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor

from tqdm import tqdm

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """Pool initializer: have the kernel SIGKILL this worker when its parent dies (Linux; no-op
    elsewhere), so a stage killed outright (OOM killer, kill -9) leaves no worker behind under PID 1.

    Should the parent already be gone before this ran (the signal is only sent on a later death),
    the worker exits at once."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl (another libc): workers outlive a killed parent, as before
        return
    if os.getppid() != parent_pid:
        os._exit(1)


def _start_worker(parent_pid: int) -> None:
    """Pool initializer. A terminal's Ctrl-C (and ``kill -INT`` of a process group) reaches the
    workers too; only the parent acts on it, and ends the pool. A worker interrupted inside the
    pool's result queue keeps its lock forever, and the parent then waits forever for a result (seen
    under ``dvc repro`` in CI). The worker was started with SIGINT blocked (``_sigint_held``): a
    SIGINT pending since then is dropped by ignoring it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    die_with_parent(parent_pid)


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Block SIGINT in the calling thread while it submits work, which is when the pool starts its
    workers and threads: they inherit the mask, so none can be interrupted before it ignores SIGINT.
    The parent acts on a SIGINT that came meanwhile as soon as this ends."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _pool(workers: int, mp_context=None) -> ProcessPoolExecutor:
    # workers are started from the calling (main) thread: PDEATHSIG follows that thread's exit
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=mp_context, initializer=_start_worker, initargs=(os.getpid(),)
    )


def start_helper(target: Callable, *args) -> multiprocessing.Process:
    """Start ``target(*args)`` in a new (spawned) process that, like the pool workers, leaves Ctrl-C
    to its parent and dies with it; it is ended at the parent's exit should it still run then."""
    process = multiprocessing.get_context("spawn").Process(
        target=_run_helper, args=(os.getpid(), target, args), daemon=True
    )
    with _sigint_held():
        process.start()
    return process


def _run_helper(parent_pid: int, target: Callable, args: tuple) -> None:
    _start_worker(parent_pid)
    target(*args)
    end_process(0)


def end_process(code) -> None:
    """End this process as Python would (threading's exit hooks, which stop process pools' manager
    threads, and other threads joined; then the atexit handlers; output flushed) but without tearing
    down its thousands of modules: measured on 2 busy cores, that teardown took 7 to 10 s of a
    process that had imported MLflow, scikit-learn and matplotlib. ``code`` is sys.exit's argument."""
    threading._shutdown()
    if isinstance(code, str):  # sys.exit("message"): printed, status 1
        print(code, file=sys.stderr)
    atexit._run_exitfuncs()  # logging.shutdown, worker pools, MLflow's own
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def pmap(
    func: Callable,
    items: Sequence,
    *,
    desc: str,
    workers: int | None = None,
    unit: str = "img",
    chunksize: int | None = None,
) -> list:
    """``[func(x) for x in items]`` over a process pool, in order, with a tqdm bar.

    Small inputs run in-process: a pool costs more to start than it saves.
    """
    return list(pmap_each(func, items, desc=desc, workers=workers, unit=unit, chunksize=chunksize))


def pmap_each(
    func: Callable,
    items: Sequence,
    *,
    desc: str,
    workers: int | None = None,
    unit: str = "img",
    chunksize: int | None = None,
) -> Iterator:
    """As ``pmap``, but yielding each result in order as it is due, for a caller that stores the
    results as they come instead of holding them all."""
    workers = workers or default_workers()
    bar = dict(total=len(items), desc=desc, unit=unit, disable=None, leave=False)
    if workers <= 1 or len(items) < 32:
        yield from (func(item) for item in tqdm(items, **bar))
        return
    chunksize = chunksize or max(1, min(64, len(items) // (workers * 8)))
    with _pool(workers) as pool:
        with _sigint_held():  # map submits every item at once, and the first submit starts the workers
            results = pool.map(func, items, chunksize=chunksize)
        yield from tqdm(results, **bar)


def _apply_each(func: Callable, chunk: Sequence) -> list:
    return [func(item) for item in chunk]


def imap(
    func: Callable, items: Sequence, *, workers: int | None = None, window: int = 256, chunksize: int = 16
) -> Iterator:
    """Lazily yield ``func(x)`` for ``items`` in order, computed by a process pool (in-process for
    small inputs). Items go to the workers ``chunksize`` at a time (one task per item costs about
    as much in inter-process traffic as decoding a small image); at most ``window`` results are
    pending, so a slow consumer bounds memory."""
    workers = workers or default_workers()
    if workers <= 1 or len(items) < 32:
        yield from map(func, items)
        return
    chunksize = max(1, min(chunksize, len(items) // (workers * 4)))
    # spawn, not fork: the caller may already run TensorFlow threads, which a fork must not copy
    with _pool(workers, multiprocessing.get_context("spawn")) as pool:
        pending: deque = deque()
        try:
            for chunk in iter_batches(items, chunksize):
                with _sigint_held():  # a submit may start a worker (spawn starts them as work comes)
                    pending.append(pool.submit(_apply_each, func, chunk))
                if len(pending) * chunksize >= window:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def iter_batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def release_pages(array) -> None:
    """Drop a memory-mapped array's pages from this process's resident memory (the OS keeps them
    in its page cache), so streaming batch by batch over a large feature file keeps RSS bounded."""
    import mmap

    mapping = getattr(array, "_mmap", None)
    if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)
