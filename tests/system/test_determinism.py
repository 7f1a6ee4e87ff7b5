"""Byte for byte: the default pipeline (``dvc repro`` on the embedded synthetic data) writes the same
outputs whatever the thread count, and the same as the committed dvc.lock and evaluation/metrics.json
(so that a fresh clone's ``git status`` stays clean after the quick start)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from support.paths import REPO
from support.project import make_project, sh

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
THREAD_COUNTS = ("1", "2")
METRICS = Path("evaluation/metrics.json")
# The MLflow run's record ({run_id, experiment_id, tracking_uri}): a new run id, and the store's
# absolute path, on every execution by design; no computed result is in it.
RUN_RECORD = "mlflow_run.json"


def lock_hashes(lock_file: Path) -> dict[tuple[str, str, str], str]:
    """Every hash in a dvc.lock: (stage, deps|outs, path) -> md5 (".dir" for a folder)."""
    stages = yaml.safe_load(lock_file.read_text())["stages"]
    return {
        (stage, kind, entry["path"]): entry["md5"]
        for stage, entry_of in stages.items()
        for kind in ("deps", "outs")
        for entry in entry_of.get(kind, [])
    }


def comparable(hashes: dict) -> dict:
    return {key: md5 for key, md5 in hashes.items() if Path(key[2]).name != RUN_RECORD}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The default pipeline run in two copies of one fresh project, one per thread count."""
    base = tmp_path_factory.mktemp("determinism")
    first = make_project(base / f"threads-{THREAD_COUNTS[0]}")
    roots = {THREAD_COUNTS[0]: first}
    for count in THREAD_COUNTS[1:]:  # copies of the first: the very same sources and parameters
        roots[count] = base / f"threads-{count}"
        shutil.copytree(first, roots[count], symlinks=True)
    for count, root in roots.items():
        sh("dvc", "repro", cwd=root, extra_env={name: count for name in THREAD_VARIABLES})
    return roots


def test_every_output_is_the_same_with_1_and_2_threads(runs):
    (one, first), (two, second) = runs.items()
    hashes_1, hashes_2 = lock_hashes(first / "dvc.lock"), lock_hashes(second / "dvc.lock")
    assert hashes_1.keys() == hashes_2.keys()
    assert any(kind == "outs" and path == "models/model.joblib" for _, kind, path in hashes_1)
    differing = {key: (hashes_1[key], hashes_2[key]) for key in comparable(hashes_1) if hashes_1[key] != hashes_2[key]}
    assert differing == {}, f"dvc.lock hashes that differ with {one} and {two} threads: {differing}"
    assert (first / METRICS).read_bytes() == (second / METRICS).read_bytes(), (
        f"{METRICS} with {one} thread:\n{(first / METRICS).read_text()}\nwith {two}:\n{(second / METRICS).read_text()}"
    )
    # what the comparison above rests on: the files themselves, byte for byte
    for path in ("models/model.joblib", "evaluation/predictions.csv", "evaluation/plots/scatter.png"):
        assert (first / path).read_bytes() == (second / path).read_bytes(), path


def test_the_committed_lock_and_metrics_reproduce(runs):
    """What a fresh clone's quick start checks with `git status`: the run gives the committed hashes."""
    root = runs[THREAD_COUNTS[0]]
    committed, produced = comparable(lock_hashes(REPO / "dvc.lock")), comparable(lock_hashes(root / "dvc.lock"))
    stale = {key: (committed.get(key), md5) for key, md5 in produced.items() if committed.get(key) != md5}
    stale.update({key: (md5, None) for key, md5 in committed.items() if key not in produced})
    advice = "run `dvc repro` in the repository and commit dvc.lock and evaluation/ with the change"
    listed = "\n".join(
        f"  {stage} {kind} {path}: committed {old}, reproduced {new}"
        for (stage, kind, path), (old, new) in sorted(stale.items())[:20]
    )
    assert not stale, f"{len(stale)} dvc.lock hashes differ from the committed ones ({advice}):\n{listed}"
    assert (REPO / METRICS).is_file(), f"{METRICS} is not in the repository; {advice}"
    assert json.loads((root / METRICS).read_text()) == json.loads((REPO / METRICS).read_text()), advice
