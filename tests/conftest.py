"""Shared fixtures: real images (generated, or from ../shared when present), a real Keras home.

Tests under tests/system/ run real dvc, mlflow and servers in subprocesses: they are marked slow
here, so ``pytest -m "not slow"`` is the fast tier (tests/unit/)."""

from __future__ import annotations

import atexit
import copy
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from support.archives import serve_folder
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
# imgclust's machine cache (the empty MLflow store new stores are copied from): one per test session,
# not the user's ~/.cache
if "XDG_CACHE_HOME" not in os.environ:
    _cache_tmp = tempfile.mkdtemp(prefix="imgclust-cache-")
    atexit.register(shutil.rmtree, _cache_tmp, ignore_errors=True)
    os.environ["XDG_CACHE_HOME"] = _cache_tmp
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# stages run in this process keep their per-image cache here, not in the checkout's .imgclust/cache
if "IMGCLUST_CACHE_DIR" not in os.environ:
    _cache_tmp = tempfile.mkdtemp(prefix="imgclust-cache-")
    atexit.register(shutil.rmtree, _cache_tmp, ignore_errors=True)
    os.environ["IMGCLUST_CACHE_DIR"] = _cache_tmp
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

SYSTEM_TESTS = Path(__file__).parent / "system"
TRACKING_ENV_VARS = ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV")

# a dvc.lock (as its YAML parses) with recognizable md5s, and the data.<stage>.<out> tags read from it
FAKE_DVC_LOCK = {
    "schema": "2.0",
    "stages": {
        "synthesize": {
            "cmd": "imgclust synthesize",
            "outs": [{"path": "data/synthetic", "hash": "md5", "md5": "0" * 32 + ".dir", "size": 1, "nfiles": 1}],
        },
        "ingest": {
            "cmd": "imgclust ingest",
            "deps": [{"path": "data/synthetic", "hash": "md5", "md5": "d" * 32 + ".dir"}],
            "outs": [
                {"path": "data/manifests/raw.csv", "hash": "md5", "md5": "1" * 32, "size": 10},
                {"path": "data/raw", "hash": "md5", "md5": "2" * 32 + ".dir", "size": 10, "nfiles": 3},
                {"path": "reports/ingest.json", "hash": "md5", "md5": "3" * 32, "size": 10},
            ],
        },
        "augment": {
            "cmd": "imgclust augment",
            "outs": [{"path": "data/augmented", "hash": "md5", "md5": "4" * 32 + ".dir", "size": 10, "nfiles": 3}],
        },
        "featurize": {
            "cmd": "imgclust featurize",
            "outs": [{"path": "data/features", "hash": "md5", "md5": "5" * 32 + ".dir", "size": 10, "nfiles": 3}],
        },
        "train": {
            "cmd": "imgclust train",
            "outs": [{"path": "models/model.joblib", "hash": "md5", "md5": "6" * 32, "size": 10}],
        },
        "evaluate": {
            "cmd": "imgclust evaluate",
            "outs": [{"path": "evaluation/predictions.csv", "hash": "md5", "md5": "7" * 32, "size": 10}],
        },
    },
}
FAKE_DVC_LOCK_TAGS = {
    "data.ingest.data/manifests/raw.csv": "1" * 32,
    "data.ingest.data/raw": "2" * 32 + ".dir",
    "data.ingest.reports/ingest.json": "3" * 32,
    "data.augment.data/augmented": "4" * 32 + ".dir",
    "data.featurize.data/features": "5" * 32 + ".dir",
}


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


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """tempfile pointed at a private folder; after the test it must be empty again."""
    import tempfile

    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    assert not list(folder.iterdir()), "a temporary extraction folder was left behind"


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving ``tmp_path / 'served'``; yields that folder and its
    base URL."""
    served = tmp_path / "served"
    served.mkdir()
    with serve_folder(served) as base:
        yield served, base


@pytest.fixture
def isolated_mlflow(monkeypatch):
    """No tracking URI or DVC variable from outside, and MLflow's global tracking URI (which
    set_tracking_uri also exports as MLFLOW_TRACKING_URI) restored after the test."""
    from mlflow.tracking._tracking_service import utils

    monkeypatch.setattr(utils, "_tracking_uri", utils._tracking_uri)
    for name in TRACKING_ENV_VARS:
        monkeypatch.setenv(name, "placeholder")  # recorded, so teardown restores the original state
        monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture(scope="session")
def fake_dvc_lock() -> tuple[dict, dict]:
    """(lock, tags): a dvc.lock as its YAML parses, with recognizable md5s, and the ``data.*`` tags
    runs.dvc_lock_hashes must read from it (copies: change them freely)."""
    return copy.deepcopy(FAKE_DVC_LOCK), dict(FAKE_DVC_LOCK_TAGS)
