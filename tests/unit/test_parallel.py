"""Pool workers leave Ctrl-C to their parent: a SIGINT that reaches them (a terminal signals its
whole foreground process group) neither stops their work nor wedges the pool. A worker interrupted
while it held the pool's result-queue lock once left ``dvc repro`` waiting forever."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from imgclust.core.parallel import imap, pmap_each

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _slow_square(x: int) -> tuple[int, int]:
    time.sleep(0.01)
    return x * x, os.getpid()


def _children() -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            found |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            continue
    return found


def _interrupt_new_children(before: set[int], stop: threading.Event, sent: list[int]) -> None:
    """SIGINT every child process started after ``before``, again and again until ``stop``."""
    while not stop.is_set():
        for pid in _children() - before:
            try:
                os.kill(pid, signal.SIGINT)
                sent.append(pid)
            except ProcessLookupError:
                continue
        time.sleep(0.005)


@pytest.mark.parametrize("mapper", ["pmap_each", "imap"])
def test_sigint_to_pool_workers_changes_nothing(mapper):
    items = list(range(400))
    before = _children()
    stop, sent = threading.Event(), []
    interrupter = threading.Thread(target=_interrupt_new_children, args=(before, stop, sent))
    interrupter.start()
    try:
        if mapper == "pmap_each":
            results = list(pmap_each(_slow_square, items, desc="t", workers=2, chunksize=4))
        else:
            results = list(imap(_slow_square, items, workers=2, chunksize=4))
    except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt must fail this test, not end the session
        pytest.fail(f"a SIGINT sent to the workers alone reached the caller: {exc!r}")
    finally:
        stop.set()
        interrupter.join()
    assert [square for square, _ in results] == [x * x for x in items]
    workers = {pid for _, pid in results}
    assert len(workers) == 2 and os.getpid() not in workers
    assert workers <= set(sent), "the test never interrupted the workers that did the work"
