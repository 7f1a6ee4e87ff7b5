"""Running the ``imgclust`` command line: in-process (unit tests) or as the installed console script."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def _cwd(path: Path):
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def run_cli(*args: str, cwd: Path, env: dict | None = None, check: bool = True) -> Result:
    """``imgclust ARGS`` in this process (Typer's CliRunner) with ``cwd`` as working folder, where
    the stage commands read params.yaml."""
    from typer.testing import CliRunner

    from imgclust.cli import app

    with _cwd(cwd):
        result = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
    out = Result(result.exit_code, result.stdout, result.stderr)
    if check and out.returncode != 0:
        raise AssertionError(f"imgclust {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def imgclust_bin() -> list[str]:
    """The installed console script (the real CLI as users run it)."""
    exe = Path(sys.executable).with_name("imgclust")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "imgclust"]


def run_installed(*args: str, cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [*imgclust_bin(), *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"imgclust {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
