"""A stage whose parent process alone is killed (the OOM killer, ``kill -9 PID``) leaves none of its
pool workers behind: they die with it (PR_SET_PDEATHSIG), both the forked pool of pmap (here the
synthesize stage) and the spawned pool of imap (the featurize stage, cnn method)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclust.core.fsutil import write_csv
from support.cli import imgclust_bin
from support.packs import pack_folder
from support.project import env, write_params

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")

GONE_WITHIN_S = 5


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that never comes counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    # a session of its own: whatever is left of it can be cleaned up as one group afterwards
    with open(log, "wb") as out:
        return subprocess.Popen(args, cwd=cwd, env=env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_workers(proc: subprocess.Popen, is_worker, log: Path, timeout: float = 120) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = {pid for pid in _children(proc.pid) if is_worker(_cmdline(pid))}
        if workers:
            return workers
        if proc.poll() is not None:
            raise AssertionError(
                f"the stage ended ({proc.returncode}) before its pool was seen:\n"
                f"{log.read_text(errors='replace')[-3000:]}"
            )
        time.sleep(0.02)
    raise AssertionError(f"no pool worker seen within {timeout} s")


def _kill_parent_and_wait(proc: subprocess.Popen, workers: set[int]) -> set[int]:
    """SIGKILL the stage process alone; the workers still alive after GONE_WITHIN_S seconds."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    deadline = time.monotonic() + GONE_WITHIN_S
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.1)
    return {pid for pid in workers if _alive(pid)}


def _cleanup(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of the session we started (survivors share its process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def test_forked_pool_workers_die_with_a_killed_stage(tmp_path):
    """synthesize maps over a forked pool (pmap); its parent is killed while the pool works."""
    write_params(tmp_path, synthesize__n_images=6000)
    log = tmp_path / "synthesize.log"
    proc = _start([*imgclust_bin(), "synthesize", "--out", str(tmp_path / "out")], tmp_path, log)
    try:
        # forked workers carry the parent's command line
        workers = _wait_for_workers(proc, lambda cmd: "synthesize" in cmd, log)
        time.sleep(0.5)  # the workers are at work
        assert _alive(proc.pid), "the stage finished before it could be killed; give it more images"
        survivors = _kill_parent_and_wait(proc, workers)
        assert not survivors, (
            f"pool workers {sorted(survivors)} outlived their killed parent by "
            f"{GONE_WITHIN_S} s: {[_cmdline(p) for p in survivors]}"
        )
    finally:
        _cleanup(proc)


def _featurize_inputs(root: Path, n: int) -> tuple[Path, Path]:
    images, rows = root / "augmented", []
    rng = np.random.default_rng(0)
    for i in range(n):
        cls = ("benign", "malignant", "normal")[i % 3]
        (images / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(images / cls / f"{i}.png")
        rows.append(
            {"path": f"{cls}/{i}.png", "class": cls, "split": "train", "source": f"{cls}/{i}.png", "op": "none"}
        )
    pack_folder(images)
    write_csv(root / "augmented.csv", rows, ("path", "class", "split", "source", "op"))
    return images, root / "augmented.csv"


def test_spawned_pool_workers_die_with_a_killed_stage(tmp_path):
    """featurize (cnn) decodes over a spawned pool (imap) while the CNN runs in the stage's own
    process; its parent is killed once the pool works (its first batch of features is written). A
    spawned worker still starting up when its parent dies (spawned workers re-import the console
    script: seconds) exits on reaching its initializer. The rows go to the stage's per-image cache
    first: its first entries show that the pool works. (Pixel rows are written by forked workers,
    the pool of the synthesize test above.) An untrained, smallest MobileNet: nothing to download."""
    images, manifest = _featurize_inputs(tmp_path, 1500)
    cnn = {"weights": "none", "alpha": 0.25, "input_size": 32, "batch_size": 8, "flip": False}
    write_params(tmp_path, featurize__method="cnn", **{f"featurize__cnn__{k}": v for k, v in cnn.items()})
    log = tmp_path / "featurize.log"
    proc = _start(
        [
            *imgclust_bin(),
            "featurize",
            "--in",
            str(images),
            "--manifest",
            str(manifest),
            "--out",
            str(tmp_path / "features"),
        ],
        tmp_path,
        log,
    )
    try:
        _wait_for_workers(proc, lambda cmd: "spawn_main" in cmd, log)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            cache = tmp_path / ".imgclust" / "cache" / "featurize"
            if cache.is_dir() and any(p.is_file() for p in cache.rglob("*")):  # the workers deliver images
                break
            time.sleep(0.02)
        assert _alive(proc.pid), "the stage finished before it could be killed; give it more images"
        everything = _children(proc.pid)  # the workers and multiprocessing's resource tracker
        assert any("spawn_main" in _cmdline(pid) for pid in everything)
        survivors = _kill_parent_and_wait(proc, everything)
        assert not survivors, (
            f"processes {sorted(survivors)} outlived their killed parent by "
            f"{GONE_WITHIN_S} s: {[_cmdline(p) for p in survivors]}"
        )
    finally:
        _cleanup(proc)
