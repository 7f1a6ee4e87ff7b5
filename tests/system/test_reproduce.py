"""``imgclust reproduce``: a colleague's run (made with ``dvc exp run -S``, so its parameters are not
the commit's) re-run from a fresh clone gets identical metrics and data hashes; plus the pieces
(parameter restoration, comparison) on real inputs, and the errors users meet."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from conftest import REPO
from imgclust import reproduce, tracking
from imgclust.errors import ImgclustError, ParamError
from test_pipeline_e2e import make_project, mlflow_runs, sh

SMALL = {"synthesize__n_images": 36, "resize__width": 48, "resize__height": 48}


@pytest.fixture(scope="module")
def colleague(tmp_path_factory) -> dict:
    """A project whose only MLflow run comes from ``dvc exp run -S train.kmeans.n_clusters=4``."""
    root = make_project(tmp_path_factory.mktemp("reproduce") / "project", **SMALL)
    sh("dvc", "exp", "run", "-n", "k4", "-S", "train.kmeans.n_clusters=4", cwd=root)
    (run,) = mlflow_runs(root)
    assert run["tags"]["dvc_exp_name"] == "k4" and run["params"]["train.kmeans.n_clusters"] == "4"
    commit = sh("git", "rev-parse", "HEAD", cwd=root).stdout.strip()
    committed = yaml.safe_load(sh("git", "show", f"{commit}:params.yaml", cwd=root).stdout)
    assert committed["train"]["kmeans"]["n_clusters"] == 3  # the run's params are not the commit's
    return {"root": root, "run": run, "commit": commit}


@pytest.mark.slow
def test_reproduce_an_exp_run_gets_identical_metrics_and_data_hashes(colleague, tmp_path):
    root, run = colleague["root"], colleague["run"]
    workdir = tmp_path / "again"
    proc = sh("imgclust", "reproduce", run["run_id"], "--workdir", str(workdir), cwd=root)
    assert f"run {run['run_id']} reproduced" in proc.stdout
    assert "train.kmeans.n_clusters: 3 (commit) -> 4 (run)" in proc.stdout
    assert "DIFFERS" not in proc.stdout

    # the clone is at the run's commit, with the run's parameters (nested, with their YAML types)
    assert sh("git", "rev-parse", "HEAD", cwd=workdir).stdout.strip() == colleague["commit"]
    assert yaml.safe_load((workdir / "params.yaml").read_text()) == yaml.safe_load((root / "params.yaml").read_text())
    # same metrics (metrics.json byte for byte) and the same content hash for every data output
    assert (workdir / "metrics.json").read_bytes() == (root / "metrics.json").read_bytes()
    logged = {k: v for k, v in run["tags"].items() if k.startswith("data.")}
    assert len(logged) >= 10 and tracking.dvc_lock_hashes(workdir / "dvc.lock") == logged
    # the re-run logged to the clone's own store, not to the colleague's
    (again,) = mlflow_runs(workdir)
    assert again["tags"]["git_commit"] == colleague["commit"]
    assert again["params"]["train.kmeans.n_clusters"] == "4"
    assert again["metrics"] == pytest.approx(run["metrics"])
    assert len(mlflow_runs(root)) == 1


@pytest.mark.slow
def test_unknown_run_is_a_clear_error(colleague, tmp_path):
    workdir = tmp_path / "never"
    proc = sh("imgclust", "reproduce", "0" * 32, "--workdir", str(workdir), cwd=colleague["root"], check=False)
    assert proc.returncode == 2
    assert f"no run '{'0' * 32}'" in proc.stderr and "Traceback" not in proc.stderr
    assert not workdir.exists()


@pytest.mark.slow
def test_non_empty_workdir_is_refused_before_cloning(colleague, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    proc = sh("imgclust", "reproduce", colleague["run"]["run_id"], "--workdir", str(tmp_path / "busy"),
              cwd=colleague["root"], check=False)
    assert proc.returncode == 2 and "not an empty folder" in proc.stderr
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["keep.txt"]


# -------------------------------------------------------------------------- parameters and comparison


def test_restore_params_from_logged_strings_keeps_types():
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    wanted = yaml.safe_load((REPO / "params.yaml").read_text())
    wanted["train"]["kmeans"]["n_clusters"] = 5
    wanted["train"]["pca"]["whiten"] = True
    wanted["split"]["test_size"] = 0.25
    wanted["featurize"]["cnn"]["weights"] = None
    wanted["strip_masks"]["patterns"] = ["*_mask*.png", "*\\seg?.png"]
    wanted["data"]["source"] = "1.5"  # a string that looks like a number stays a string
    # exactly what evaluate logs: flattened keys, str() of values, None as "null"
    logged = {k: ("null" if v is None else str(v)) for k, v in tracking.flatten(wanted).items()}
    params, changed = reproduce.restore_params(base, logged)
    assert params == wanted
    assert set(changed) == {"train.kmeans.n_clusters", "train.pca.whiten", "split.test_size",
                            "featurize.cnn.weights", "strip_masks.patterns", "data.source"}
    assert changed["train.kmeans.n_clusters"] == (3, 5)
    # nothing logged differs: the commit's params are left exactly as they are
    same = {k: ("null" if v is None else str(v)) for k, v in tracking.flatten(base).items()}
    assert reproduce.restore_params(base, same) == (base, {})


def test_restore_params_creates_keys_the_commit_lacks():
    params, changed = reproduce.restore_params({"train": {"kmeans": {"n_clusters": 3}}},
                                               {"train.kmeans.n_clusters": "3", "train.kmeans.algorithm": "elkan",
                                                "evaluate.thumbnails": "4"})
    assert params == {"train": {"kmeans": {"n_clusters": 3, "algorithm": "elkan"}}, "evaluate": {"thumbnails": 4}}
    assert set(changed) == {"train.kmeans.algorithm", "evaluate.thumbnails"}


def test_compare_and_check_report_every_difference(tmp_path):
    metrics_json = {"train": {"ari": 0.5, "silhouette": None}, "test": {"ari": 0.25, "nmi": 0.7}}
    reproduced = reproduce.flat_metrics(metrics_json)
    assert reproduced == {"train_ari": 0.5, "test_ari": 0.25, "test_nmi": 0.7}
    checks = reproduce.compare_values({"train_ari": 0.5 + 1e-12, "test_ari": 0.3, "test_ami": 0.1}, reproduced,
                                      tolerance=1e-9)
    verdict = {c.name: c.match for c in checks}
    assert verdict == {"train_ari": True, "test_ari": False, "test_ami": False, "test_nmi": False}
    hashes = reproduce.compare_values({"data.ingest.data/raw": "a.dir"}, {"data.ingest.data/raw": "b.dir"})
    result = reproduce.ReproduceResult(
        run_id="r1", repo="repo", workdir=tmp_path, git_commit="c" * 40, git_dirty=True, params_restored={},
        source_rewritten=None, pulled=None, metrics=checks, hashes=hashes, new_run_id=None)
    assert not result.matches and len(result.mismatches) == 4
    text = reproduce.format_result(result)
    assert text.count("DIFFERS") == 4 and "data.ingest.data/raw" in text
    with pytest.raises(reproduce.ReproductionMismatchError, match="4 value"):
        reproduce.check(result)
    assert issubclass(reproduce.ReproductionMismatchError, ImgclustError)

    exact = dataclasses.replace(result, metrics=[c for c in checks if c.match], hashes=[])
    reproduce.check(exact)  # all equal: no exception
    with pytest.raises(reproduce.ReproductionMismatchError, match="no metric"):
        reproduce.check(dataclasses.replace(result, metrics=[], hashes=[]))


def test_parse_logged_values():
    assert reproduce.parse_logged("4") == 4
    assert reproduce.parse_logged("0.1") == 0.1
    assert reproduce.parse_logged("False") is False
    assert reproduce.parse_logged("null") is None
    assert reproduce.parse_logged("['a', 'b=c+d']") == ["a", "b=c+d"]
    assert reproduce.parse_logged("honest") == "honest"
    assert reproduce.parse_logged("007", current="abc") == "007"
    assert reproduce.parse_logged("inf") == "inf"  # YAML 1.1 spells infinity .inf
    assert reproduce.parse_logged("{'a': 1}") == {"a": 1}


def test_workdir_must_be_new_or_empty(tmp_path):
    (tmp_path / "empty").mkdir()
    assert reproduce._prepare_workdir(tmp_path / "empty", "r") == (tmp_path / "empty").resolve()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ParamError):
        reproduce._prepare_workdir(tmp_path / "file", "r")
    default = reproduce._prepare_workdir(None, "abcdef123")
    try:
        assert default.parent.name.startswith("imgclust-reproduce-abcdef12-") and not default.exists()
    finally:
        default.parent.rmdir()


def test_a_source_outside_the_repository_is_read_next_to_the_original(tmp_path):
    original = tmp_path / "team" / "project"
    original.mkdir(parents=True)
    (tmp_path / "team" / "dataset").mkdir()
    clone = tmp_path / "elsewhere" / "project"
    clone.mkdir(parents=True)
    outside = {"data": {"source": "../dataset"}}
    assert reproduce._outside_source(outside, clone, str(original)) == str((tmp_path / "team" / "dataset").resolve())
    # inside the repository (git, dvc pull or a stage provides it), absolute, or a remote repository: as is
    assert reproduce._outside_source({"data": {"source": "data/synthetic"}}, clone, str(original)) is None
    assert reproduce._outside_source({"data": {"source": str(tmp_path)}}, clone, str(original)) is None
    assert reproduce._outside_source(outside, clone, "https://git.example.com/team/project.git") is None
