"""Interrupted stages (SIGINT, SIGKILL) leave no output that DVC or the next stage would take as
complete, and the next run (or ``dvc repro``) finishes correctly."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclust.core import fsutil
from imgclust.core.item_cache import ItemCache
from imgclust.core.packs import Pack
from support.cli import imgclust_bin
from support.packs import pack_folder
from support.project import env, make_project, sh, tree_hashes, write_params

N_IMAGES = 300


@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    """300 PNGs of 1024 x 1024 in 3 classes: enough decoding work to interrupt a resize mid-way (its
    per-image cache showed 37, 127, 217, then 300 entries over 0.75 s). JPEGs are decoded straight to
    1/8 size by DCT scaling: resized to 40 x 40, all 300 were done within 30 ms of the first, too
    short a window to be sure to catch under load."""
    root = tmp_path_factory.mktemp("many") / "source"
    y, x = np.mgrid[0:1024, 0:1024]
    base = ((x + y) // 8 % 256).astype(np.uint8)
    for i in range(N_IMAGES):
        folder = root / "abc"[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.roll(base, i, axis=1)).save(folder / f"img ({i}).png")
    return root


@pytest.fixture(scope="module")
def many_packed(many_images, tmp_path_factory) -> Path:
    """The same images as a pack: what strip_masks hands to resize."""
    packed = tmp_path_factory.mktemp("many-packed") / "stripped"
    shutil.copytree(many_images, packed)
    return pack_folder(packed)


def _tmp_siblings(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.tmp-*"))


def _resized_so_far(project: Path) -> Callable[[], int]:
    """How many images resize has finished, run in ``project``: its per-image cache entries (it
    packs each into its temporary output as it arrives; the output appears once all are there)."""
    return lambda: len(ItemCache(project / ".imgclust" / "cache", "resize", {}).entries())


def _default_sigint() -> None:
    # as in a terminal: a shell's background job (`pytest &` in a script, nohup) inherits SIGINT
    # ignored, and Python then never turns Ctrl-C into KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    # a session of its own, so the whole tree (the command and its worker processes) can be signalled,
    # as a terminal's Ctrl-C signals its foreground process group
    return subprocess.Popen(
        args,
        cwd=cwd,
        env=env(),
        start_new_session=True,
        preexec_fn=_default_sigint,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _interrupt_mid_stage(proc: subprocess.Popen, done: Callable[[], int], sig: int, timeout: float = 120) -> int:
    """Wait until the stage has finished some images (``done()``), then send ``sig`` to its
    process group; return how many it had finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            os.killpg(proc.pid, signal.SIGSTOP)  # freeze the tree, so the count below is the state hit
            written = done()
            os.killpg(proc.pid, sig)
            os.killpg(proc.pid, signal.SIGCONT)  # a stopped process acts on SIGINT once continued
            proc.communicate(timeout=timeout)
            return written
        if proc.poll() is not None:
            stdout, stderr = proc.communicate()
            raise AssertionError(f"finished (rc {proc.returncode}) before it could be interrupted:\n{stdout}\n{stderr}")
        time.sleep(0.001)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("the stage never started writing")


def _session_alive(sid: int, grace_s: float = 10) -> bool:
    """Whether a process of session ``sid`` still runs after ``grace_s`` (an orphaned worker would);
    killed processes take a moment to be reaped."""

    def alive() -> bool:
        for entry in Path("/proc").iterdir():
            try:
                if (
                    entry.name.isdigit()
                    and os.getsid(int(entry.name)) == sid
                    and (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
                ):
                    return True
            except (ProcessLookupError, FileNotFoundError, PermissionError):
                continue
        return False

    deadline = time.monotonic() + grace_s
    while alive():
        if time.monotonic() > deadline:
            return True
        time.sleep(0.05)
    return False


def _resize_args(source: Path, out: Path, size: int, folder: Path) -> list[str]:
    """``imgclust resize`` to ``size`` x ``size``, to be run in ``folder``, where its params.yaml is
    written (the stage reads the size from there)."""
    write_params(folder, resize__width=size, resize__height=size)
    return [*imgclust_bin(), "resize", "--in", str(source), "--out", str(out)]


def _sizes(folder: Path) -> set[tuple[int, int]]:
    return {Image.open(io.BytesIO(data)).size for _, data in Pack(folder).iter_items()}


def test_sigint_mid_resize_leaves_neither_output_nor_temporary_folder(many_packed, tmp_path):
    out = tmp_path / "data" / "resized"
    proc = _start(_resize_args(many_packed, out, 64, tmp_path), tmp_path)
    written = _interrupt_mid_stage(proc, _resized_so_far(tmp_path), signal.SIGINT)
    assert 0 < written < N_IMAGES
    assert proc.returncode != 0
    assert not out.exists()
    assert not _tmp_siblings(out), "the interrupted stage did not remove its temporary folder"
    assert not _session_alive(proc.pid)


def test_sigkill_mid_resize_keeps_the_previous_output_and_the_next_run_resumes(many_packed, tmp_path):
    out = tmp_path / "data" / "resized"
    subprocess.run(
        _resize_args(many_packed, out, 32, tmp_path), cwd=tmp_path, check=True, capture_output=True, env=env()
    )
    before = tree_hashes(out)
    assert len(Pack(out)) == N_IMAGES

    proc = _start(_resize_args(many_packed, out, 48, tmp_path), tmp_path)
    before_kill = _resized_so_far(tmp_path)()
    written = _interrupt_mid_stage(proc, lambda: _resized_so_far(tmp_path)() - before_kill, signal.SIGKILL)
    assert 0 < written < N_IMAGES and proc.returncode == -signal.SIGKILL
    assert not _session_alive(proc.pid)
    assert tree_hashes(out) == before, "the complete previous output was touched"

    done = subprocess.run(
        _resize_args(many_packed, out, 48, tmp_path),
        cwd=tmp_path,
        check=True,
        capture_output=True,
        env=env(),
        text=True,
    )
    assert len(Pack(out)) == N_IMAGES and _sizes(out) == {(48, 48)}
    # what the killed run finished is not computed again (the count may lag a write by a file or two)
    computed = int(re.search(r"(\d+) computed", done.stdout).group(1))
    assert computed <= N_IMAGES - written + 2, done.stdout
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_stale_temporary_folders_of_killed_runs_are_cleaned(tmp_path):
    out = tmp_path / "resized"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    stale = tmp_path / f".resized.tmp-{int(dead.stdout)}"
    (stale / "a").mkdir(parents=True)
    (stale / "a" / "half.png").write_bytes(b"\x89PNG")
    alive = tmp_path / f".resized.tmp-{os.getppid()}"  # a live process's: may still be writing
    alive.mkdir()
    with fsutil.atomic_dir(out) as tmp:
        (tmp / "done").write_text("ok")
    assert (out / "done").read_text() == "ok"
    assert not stale.exists(), "a dead run's temporary folder was left behind"
    assert alive.exists(), "a live process's temporary folder was removed"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_dvc_repro_killed_mid_stage_then_repro_again_is_correct(many_images, tmp_path, sig):
    root = make_project(tmp_path / "project", data__source=str(many_images), resize__width=40, resize__height=40)
    resized = root / "data" / "resized"
    proc = _start(["dvc", "repro", "augment"], root)
    written = _interrupt_mid_stage(proc, _resized_so_far(root), sig)
    assert 0 < written < N_IMAGES and proc.returncode != 0
    assert not _session_alive(proc.pid), "a stage process outlived the interrupted dvc repro"
    assert not resized.exists()
    assert not (root / "data" / "manifests" / "split.csv").exists()
    status = sh("dvc", "status", "augment", cwd=root).stdout
    assert "resize" in status, status

    sh("dvc", "repro", "augment", cwd=root)
    assert len(Pack(resized)) == N_IMAGES and _sizes(resized) == {(40, 40)}
    assert len(Pack(root / "data" / "augmented")) >= N_IMAGES
    assert "up to date" in sh("dvc", "status", "augment", cwd=root).stdout
