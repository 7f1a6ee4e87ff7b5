"""Shared fixtures: real images (generated, or from ../shared when present), a real Keras home."""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
KERAS_HOME = SHARED / "keras"
BUSI_SAMPLE = SHARED / "datasets" / "busi-sample"
BUSI256 = SHARED / "datasets" / "busi256"

# Keras reads KERAS_HOME when it is first imported, and writes a keras.json into it: point it,
# before any test imports keras, at a private copy of the shared (read-only) Keras home.
if KERAS_HOME.is_dir() and "KERAS_HOME" not in os.environ:
    _keras_tmp = tempfile.mkdtemp(prefix="imgclust-keras-")
    atexit.register(shutil.rmtree, _keras_tmp, ignore_errors=True)
    _keras_copy = Path(_keras_tmp) / "keras"
    shutil.copytree(KERAS_HOME, _keras_copy)
    os.environ["KERAS_HOME"] = str(_keras_copy)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every regular file under ``root`` (links are not followed)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.fixture(scope="session", autouse=True)
def shared_datasets_unchanged():
    """The read-only ../shared/datasets must hold the same bytes after the tests as before."""
    root = SHARED / "datasets"
    before = tree_hashes(root) if root.is_dir() else {}
    yield
    assert (tree_hashes(root) if root.is_dir() else {}) == before, "a test changed ../shared/datasets"


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """A small synthetic BUSI-like dataset (read-only by convention: copy it before changing it)."""
    from imgclust.synthesize import synthesize

    out = tmp_path_factory.mktemp("synthetic") / "dataset"
    synthesize(out, n_images=36, seed=0)
    return out


@pytest.fixture
def busi_sample() -> Path:
    if not BUSI_SAMPLE.is_dir():
        pytest.skip("../shared/datasets/busi-sample not present")
    return BUSI_SAMPLE


@pytest.fixture
def busi256() -> Path:
    if not BUSI256.is_dir():
        pytest.skip("../shared/datasets/busi256 not present")
    return BUSI256


@pytest.fixture
def copy_of(tmp_path):
    def _copy(src: Path, name: str = "src") -> Path:
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst

    return _copy


def imgclust_bin() -> list[str]:
    """The installed console script (the real CLI as users run it)."""
    exe = Path(sys.executable).with_name("imgclust")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "imgclust"]


@pytest.fixture
def run_cli():
    def _run(*args: str, cwd: Path | None = None, env: dict | None = None, check: bool = True):
        proc = subprocess.run([*imgclust_bin(), *args], cwd=cwd, capture_output=True, text=True,
                              env={**os.environ, **(env or {})})
        if check and proc.returncode != 0:
            raise AssertionError(f"imgclust {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    return _run


BALANCING_OPS = ["rot180", "flip_lr", "flip_tb", "rot90", "rot270"]


def run_data_stages(root: Path, source: Path, mode: str = "gray", size: int = 32,
                    test_size: float = 0.25) -> dict[str, Path]:
    """Run the real data stages (ingest -> augment) on ``source`` into ``root``; return the paths
    the model stages need."""
    from imgclust.augment import augment
    from imgclust.fsutil import write_csv
    from imgclust.ingest import ingest
    from imgclust.resize import resize_images
    from imgclust.split import SPLIT_FIELDS, list_images, split_rows
    from imgclust.strip_masks import strip_masks

    root.mkdir(parents=True, exist_ok=True)
    ingest(source, root / "raw", root / "raw.csv", workers=1)
    strip_masks(root / "raw", root / "stripped", ["*_mask*.png"])
    resize_images(root / "stripped", root / "resized", size, size, mode, "lanczos", workers=1)
    write_csv(root / "split.csv", split_rows(list_images(root / "resized"), test_size, 0), SPLIT_FIELDS)
    augment(root / "resized", root / "split.csv", root / "augmented", root / "augmented.csv",
            protocol="honest", ops=BALANCING_OPS, target="max", seed=0, workers=1)
    return {"images": root / "augmented", "manifest": root / "augmented.csv", "split": root / "split.csv"}
