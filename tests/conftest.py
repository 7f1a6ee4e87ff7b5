"""Shared fixtures: real images (generated, or from ../shared when present), a real Keras home.

Tests under tests/system/ run real dvc, mlflow and servers in subprocesses: they are marked slow
here, so ``pytest -m "not slow"`` is the fast tier (tests/unit/)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from support.paths import BUSI256, BUSI_SAMPLE, KERAS_HOME, SHARED
from support.project import tree_hashes

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

SYSTEM_TESTS = Path(__file__).parent / "system"


def pytest_collection_modifyitems(items):
    for item in items:
        if SYSTEM_TESTS in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slow)


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
    from imgclust.stages.synthesize import synthesize

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
