"""What a team sees after `dvc repro` on real git + DVC projects and a real SQLite MLflow store:
the run's dataset inputs, name and stage timings, the experiment's kind, a quiet evaluate, an
offline `dvc plots show` page, and the dataset scope of compare, register --best and predict after
runs on two datasets.

One module-scoped project (36 synthetic images at 48x48): `dvc repro` on data/synthetic, then
`dvc exp run -S data.source=../photos` (other images, one fewer: another dataset and data version).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from imgclust.core.fsutil import read_csv
from imgclust.core.packs import Pack
from support.cli import run_cli
from support.project import make_project, mlflow_runs, sh

SMALL = {"synthesize__n_images": 36, "resize__width": 48, "resize__height": 48}
STAGES = ("synthesize", "ingest", "strip_masks", "resize", "split", "augment", "featurize", "train", "evaluate")


def client(root: Path):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")


def data_version(root: Path) -> str:
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"]["ingest"]["outs"] if o["path"] == "data/raw")


def cli(root: Path, *args: str, check: bool = True):
    """A tool in this process (no interpreter start and MLflow import per call) on the project's store."""
    return run_cli(*args, cwd=root, check=check)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("views") / "project", **SMALL)
    repro = sh("dvc", "repro", cwd=root)
    first = {"version": data_version(root), "run": json.loads((root / "evaluation" / "mlflow_run.json").read_text())}
    status_after_repro = sh("git", "status", "--porcelain", "--ignored", cwd=root).stdout
    plots = sh("dvc", "plots", "show", cwd=root)
    page = (root / "dvc_plots" / "index.html").read_text(encoding="utf-8")
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "first dataset", cwd=root)
    # a second dataset: other images (another data version) under another name
    sh("imgclust", "synthesize", "--out", str(root.parent / "photos"), cwd=root)
    (root.parent / "photos" / "benign" / "benign (1).png").unlink()
    sh("dvc", "exp", "run", "-S", "data.source=../photos", cwd=root)
    second = {"version": data_version(root), "run": json.loads((root / "evaluation" / "mlflow_run.json").read_text())}
    assert first["version"] != second["version"]
    return {
        "root": root,
        "repro": repro,
        "status": status_after_repro,
        "plots": plots,
        "page": page,
        "first": first,
        "second": second,
    }


def test_run_has_dataset_inputs_a_descriptive_name_and_stage_timings(project):
    root, first = project["root"], project["first"]
    run = client(root).get_run(first["run"]["run_id"])
    assert run.info.run_name == "synthetic | pixels | k=3 | honest"
    inputs = {d.tags[0].value: d.dataset for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "test"}
    for context, dataset in inputs.items():
        assert dataset.digest == first["version"]  # the data version of dvc.lock
        assert json.loads(dataset.source) == {"uri": "data/synthetic"}  # data.source
        assert dataset.name == f"synthetic ({context})"
        profile = json.loads(dataset.profile)
        assert sum(profile["images_per_class"].values()) == profile["images"] > 0
    tags = run.data.tags
    assert tags["imgclust.dataset"] == "synthetic" and tags["imgclust.data_version"] == first["version"]
    metrics = run.data.metrics
    for stage in STAGES:
        assert metrics[f"time/{stage}_s"] > 0 and metrics[f"memory/{stage}_peak_mb"] > 10
    total = sum(metrics[f"time/{stage}_s"] for stage in STAGES)
    assert metrics["time/total_s"] == pytest.approx(total, abs=0.01)
    assert metrics["memory/peak_mb"] == max(metrics[f"memory/{stage}_peak_mb"] for stage in STAGES)


def test_experiment_opens_on_training_runs_with_a_description(project):
    experiment = client(project["root"]).get_experiment_by_name("imgclust")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "test_ari" in experiment.tags["mlflow.note.content"]


def test_timings_stay_out_of_git_and_are_consumed(project):
    root = project["root"]
    assert ".imgclust" not in sh("git", "status", "--porcelain", cwd=root).stdout
    assert sh("git", "check-ignore", ".imgclust/stage_times.jsonl", cwd=root).returncode == 0
    assert not (root / ".imgclust" / "stage_times.jsonl").exists()  # evaluate consumed it


def test_evaluate_output_is_quiet_and_names_the_run(project):
    out = project["repro"].stdout + project["repro"].stderr
    assert "CloudPickle" not in out and "Downloading artifacts" not in out and "pip version" not in out
    assert "(synthetic | pixels | k=3 | honest)" in out


def test_dvc_plots_page_loads_no_script_from_the_internet(project):
    page = project["page"]
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)
    assert "cdn.jsdelivr" not in page and "vegaEmbed(" in page
    assert "/*! vega@5.20.2 (npm)" in page
    for png in ("contingency", "scatter", "thumbnails"):
        assert f"evaluation/plots/{png}.png" in page


def test_compare_shows_and_filters_by_dataset(project, isolated_mlflow):
    root, first, second = project["root"], project["first"], project["second"]
    table = cli(root, "compare", "--format", "json").stdout
    rows = json.loads(table)
    assert {r["data_version"] for r in rows} == {first["version"][:8], second["version"][:8]}
    assert {(r["dataset"], r["data_version"]) for r in rows} == {
        ("synthetic", first["version"][:8]),
        ("photos", second["version"][:8]),
    }
    only = json.loads(cli(root, "compare", "--format", "json", "--dataset", first["version"][:8]).stdout)
    assert [r["run"] for r in only] == [first["run"]["run_id"]]
    by_name = json.loads(cli(root, "compare", "--format", "json", "--dataset", "photos").stdout)
    assert [r["run"] for r in by_name] == [second["run"]["run_id"]]
    assert "no pipeline run matches" in cli(root, "compare", "--dataset", "nope").stdout


def test_register_best_ranks_the_current_dataset_only_and_records_it(project, isolated_mlflow):
    root, first, second = project["root"], project["first"], project["second"]
    out = cli(root, "register", "--best", "ari_test").stdout
    version = client(root).get_model_version_by_alias("imgclust", "champion")
    assert version.run_id == second["run"]["run_id"]  # the workspace holds the second dataset
    assert "current data (photos" in out and "trained on dataset photos (source ../photos)" in out
    assert version.tags["imgclust.data_version"] == second["version"]
    assert version.tags["imgclust.dataset"] == "photos" and "photos" in version.description

    cli(root, "register", "--best", "ari_test", "--dataset", "synthetic", "--alias", "first")
    assert client(root).get_model_version_by_alias("imgclust", "first").run_id == first["run"]["run_id"]
    bad = cli(root, "register", "--best", "ari_test", "--dataset", "nope", check=False)
    assert bad.returncode == 2 and "runs exist for: " in bad.stderr and "photos (data version" in bad.stderr


def test_predict_names_the_dataset_warns_on_unlike_images_and_gives_class_shares(project, tmp_path, isolated_mlflow):
    root = project["root"]
    cli(root, "register", "--best", "ari_test")  # the photos run
    folder = tmp_path / "new"
    folder.mkdir()
    raw = Pack(root / "data" / "raw")
    like = next(p for p in raw.paths() if "_mask" not in p and p.endswith(".png"))
    Image.open(io.BytesIO(raw.read(like))).save(folder / "like.png")
    Image.fromarray(np.full((20, 600, 3), 255, np.uint8)).save(folder / "unlike.png")  # white strip, RGB
    proc = cli(root, "predict", str(folder), "-o", str(tmp_path / "p.csv"))
    assert "trained on dataset photos" in proc.stdout
    assert "1 of 2 image(s) differ from the images the model was trained on" in proc.stderr
    rows = {Path(r["path"]).name: r for r in read_csv(tmp_path / "p.csv")}
    assert rows["like.png"]["warnings"] == ""
    assert "width 600 px outside the training range" in rows["unlike.png"]["warnings"]
    assert "pixel mean" in rows["unlike.png"]["warnings"]
    for row in rows.values():
        shares = dict(part.rsplit(" ", 1) for part in row["cluster_classes"].split("; "))
        assert row["cluster_class"] == next(iter(shares))
        assert float(row["cluster_class_share"]) == pytest.approx(float(shares[row["cluster_class"]]), abs=0.005)
        assert sum(float(v) for v in shares.values()) == pytest.approx(1.0, abs=0.02)
    assert len(mlflow_runs(root)) == 2
