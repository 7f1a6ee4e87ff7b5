"""Keep TensorFlow's native start-up lines out of a command's output.

TensorFlow's C++ side writes to file descriptor 2 while its library loads (absl's "All log messages
before absl::InitializeLog() ...", oneDNN's "custom operations are on"), whatever the logging
variables say. ``divert_tensorflow_import`` installs an import hook: when (and only when) something
imports ``tensorflow``, descriptor 2 points at a log file for the duration of that import. Python
errors are raised as exceptions, so a failing import still reports itself.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import sys
from pathlib import Path

NOISY_PACKAGES = ("tensorflow",)


@contextlib.contextmanager
def stderr_to(path: Path):
    """Point file descriptor 2 (native code's stderr) at ``path`` (appended) for the block."""
    sys.stderr.flush()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:
        yield
        return
    saved = os.dup(2)
    try:
        os.dup2(target, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(target)


class _DivertingLoader(importlib.abc.Loader):
    def __init__(self, loader, log: Path):
        self.loader, self.log = loader, log

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with stderr_to(self.log):
            self.loader.exec_module(module)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, log: Path):
        self.log = log

    def find_spec(self, name, path=None, target=None):
        if name not in NOISY_PACKAGES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _DivertingLoader(spec.loader, self.log)
        return spec


def divert_tensorflow_import(log: Path) -> None:
    """Install the hook (once per process); native start-up output of TensorFlow goes to ``log``."""
    if any(isinstance(f, _Finder) for f in sys.meta_path) or any(p in sys.modules for p in NOISY_PACKAGES):
        return
    sys.meta_path.insert(0, _Finder(Path(log).resolve()))
