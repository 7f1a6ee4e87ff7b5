"""Progress of a stage's steps: a bar on a terminal, one plain line per step in a log.

Stages whose work is a few long calls (train's fit, evaluate's scoring, plots and logging) print
nothing for many seconds otherwise. Off a terminal (DVC's output piped to a file, CI) a bar's
carriage returns run together into one long line, so each step is a line of its own there.
"""

from __future__ import annotations

import sys
import time


class Steps:
    """``step(label)`` as each of ``total`` steps starts, ``close()`` at the end. On a terminal a
    tqdm bar on stderr (removed when closed), elsewhere ``name: [i/n] label (seconds so far)`` lines
    on stdout, with the stage's other output (stderr keeps errors and warnings only)."""

    def __init__(self, name: str, total: int):
        self.name, self.total, self.count = name, total, 0
        self.started = time.perf_counter()
        self.bar = None
        self.stream = sys.stdout
        if sys.stderr.isatty():
            self.stream = sys.stderr
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=name, unit="step", leave=False, file=self.stream)

    def step(self, label: str) -> None:
        self.count += 1
        if self.bar is not None:
            self.bar.update(1 if self.count > 1 else 0)
            self.bar.set_postfix_str(label)
            return
        elapsed = time.perf_counter() - self.started
        print(f"{self.name}: [{self.count}/{self.total}] {label} ({elapsed:.1f} s)", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
