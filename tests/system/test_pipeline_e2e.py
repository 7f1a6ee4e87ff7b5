"""End to end: the real dvc.yaml in a fresh temporary git + DVC repository, with a real MLflow store."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml
from PIL import Image

from imgclust.core.packs import Pack
from support.paths import REPO
from support.project import make_project, mlflow_runs, sh


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The default pipeline reproduced once (shared by the tests of this module, in order)."""
    root = make_project(tmp_path_factory.mktemp("e2e") / "project")
    sh("dvc", "repro", cwd=root)
    return root


def test_repro_produces_every_output(project):
    stripped = Pack(project / "data" / "stripped").paths()
    assert stripped and not [p for p in stripped if "_mask" in p]
    resized = Pack(project / "data" / "resized")
    assert len(resized) == len(stripped) == 120
    assert {Image.open(io.BytesIO(data)).size for _, data in resized.iter_items()} == {(190, 190)}
    with open(project / "data" / "manifests" / "augmented.csv", newline="") as fh:
        manifest = list(csv.DictReader(fh))
    train_counts = Counter(row["class"] for row in manifest if row["split"] == "train")
    assert len(set(train_counts.values())) == 1, train_counts
    metrics = json.loads((project / "evaluation" / "metrics.json").read_text())
    assert set(metrics) == {"train", "test", "originals"}
    for name in ("contingency.png", "scatter.png", "thumbnails.png"):
        assert (project / "evaluation" / "plots" / name).stat().st_size > 1000


def test_datasets_are_few_files_linked_to_the_dvc_cache(project):
    """Each image dataset is a pack: a few tar shards and an index, not a file per image, so DVC
    hashes and links a handful of files. .dvc/config's cache.type (hardlink,copy) makes DVC hard-link
    each new output file into its cache instead of copying it, and protect it read-only."""
    assert "type = hardlink,copy" in (project / ".dvc" / "config").read_text()

    def cached(path: Path) -> Path:
        md5 = hashlib.md5(path.read_bytes()).hexdigest()
        return project / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]

    lock = yaml.safe_load((project / "dvc.lock").read_text())
    outs = {o["path"]: o for stage in lock["stages"].values() for o in stage.get("outs", [])}
    for name in ("raw", "stripped", "resized", "augmented"):
        folder = project / "data" / name
        files = sorted(p for p in folder.iterdir())
        assert outs[f"data/{name}"]["nfiles"] == len(files) <= 4, files  # 120-240 images, 1-3 shards + index
        for path in files:
            assert path.stat().st_ino == cached(path).stat().st_ino
            assert path.stat().st_mode & 0o222 == 0  # DVC protects linked files: nothing edits the cache in place
    # augment passes originals on unchanged: the same bytes as resize wrote
    resized, augmented = Pack(project / "data" / "resized"), Pack(project / "data" / "augmented")
    rel = "benign/benign (1).png"
    assert augmented.read(rel) == resized.read(rel)
    features = project / "data" / "features" / "features.npy"
    assert features.stat().st_ino == cached(features).stat().st_ino


def test_one_mlflow_run_per_execution_and_noop_repro(project):
    runs = mlflow_runs(project)
    assert len(runs) == 1
    run = runs[0]
    metrics = json.loads((project / "evaluation" / "metrics.json").read_text())
    assert run["metrics"]["train_ari"] == pytest.approx(metrics["train"]["ari"])
    assert run["metrics"]["test_ari"] == pytest.approx(metrics["test"]["ari"])
    assert run["params"]["train.kmeans.n_clusters"] == "3"
    assert run["params"]["data.source"] == "data/synthetic"
    head = sh("git", "rev-parse", "HEAD", cwd=project).stdout.strip()
    assert run["tags"]["git_commit"] == head
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    raw_hash = next(o["md5"] for o in lock["stages"]["ingest"]["outs"] if o["path"] == "data/raw")
    assert run["tags"]["data.ingest.data/raw"] == raw_hash

    again = sh("dvc", "repro", cwd=project)
    assert "didn't change, skipping" in again.stdout
    assert "Running stage" not in again.stdout
    assert len(mlflow_runs(project)) == 1
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=project).stdout


def test_metrics_and_plots_show(project):
    shown = sh("dvc", "metrics", "show", "--json", cwd=project).stdout
    assert '"ari"' in shown
    out = sh("dvc", "plots", "show", "-o", str(project / "dvc_plots"), cwd=project)
    assert (project / "dvc_plots" / "index.html").exists(), out.stdout


def test_changing_augment_reruns_only_from_augment(project):
    dry = sh("dvc", "repro", "--dry", cwd=project, check=False)
    assert dry.returncode == 0
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["augment"]["seed"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = sh("dvc", "status", cwd=project).stdout
    changed = {line.strip().rstrip(":") for line in status.splitlines() if line and not line.startswith((" ", "\t"))}
    assert "augment" in changed
    assert not {"synthesize", "ingest", "strip_masks", "resize", "split"} & changed, status
    params["augment"]["seed"] = 0
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "up to date" in sh("dvc", "status", cwd=project).stdout


STAGES = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
# source files each stage imports, whose edit must make the stage out of date: a core module and
# the config every stage imports, and the stage's own module (evaluate: also the MLflow names)
STAGE_SOURCES = {
    stage: ["src/imgclust/core/fsutil.py", "src/imgclust/config.py", f"src/imgclust/stages/{stage}.py"]
    for stage in STAGES
}
STAGE_SOURCES["evaluate"].append("src/imgclust/tracking/naming.py")


def changed_stages(root: Path) -> dict:
    """stage -> what changed, from ``dvc status --json`` ({} when everything is up to date)."""
    return json.loads(sh("dvc", "status", "--json", cwd=root).stdout.strip() or "{}")


def ran_stages(repro_stdout: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", repro_stdout))


@pytest.fixture(scope="module")
def project_copy(project, tmp_path_factory) -> Path:
    """A copy of the reproduced project (git, DVC cache and lock included) that tests may edit."""
    copy = tmp_path_factory.mktemp("e2e-copy") / "project"
    shutil.copytree(project, copy, symlinks=True)
    assert changed_stages(copy) == {}, "the copy must start up to date"
    return copy


@pytest.mark.parametrize("stage", STAGES)
def test_editing_a_source_file_a_stage_imports_makes_it_changed(project_copy, stage):
    assert (project_copy / "src" / "imgclust" / "stages" / f"{stage}.py").is_file(), "one module per stage"
    for rel in STAGE_SOURCES[stage]:
        path = project_copy / rel
        original = path.read_bytes()
        try:
            path.write_bytes(original + b"\n# a comment changes the file, so the stage must rerun\n")
            changed = changed_stages(project_copy)
            assert stage in changed, (rel, changed)
            if rel.startswith("src/imgclust/stages/"):
                # a stage's own module is a dependency of that stage only
                assert set(changed) == {stage}, (rel, changed)
        finally:
            path.write_bytes(original)
    assert changed_stages(project_copy) == {}


def test_synthesize_params_do_not_matter_when_the_source_is_elsewhere(tmp_path, synthetic_dataset):
    """With data.source pointing at another folder, synthesize's outputs feed nothing: changing
    synthesize.n_images reruns synthesize alone, and evaluate logs no new MLflow run."""
    source = tmp_path / "dataset"
    shutil.copytree(synthetic_dataset, source)
    root = make_project(
        tmp_path / "project", data__source=str(source), synthesize__n_images=36, resize__width=48, resize__height=48
    )
    first = sh("dvc", "repro", cwd=root).stdout
    assert "evaluate" in ran_stages(first)
    (run,) = mlflow_runs(root)
    assert run["params"]["data.source"] == str(source)
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "reproduced", cwd=root)

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["synthesize"]["n_images"] = 45
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert set(changed_stages(root)) == {"synthesize"}
    again = sh("dvc", "repro", cwd=root).stdout
    assert ran_stages(again) == {"synthesize"}, again
    for stage in STAGES[STAGES.index("ingest") :]:
        assert f"Stage '{stage}' didn't change, skipping" in again, (stage, again)
    assert [r["run_id"] for r in mlflow_runs(root)] == [run["run_id"]]
    assert changed_stages(root) == {}


def test_exp_run_in_workspace_and_temp_each_log_one_run(project):
    sh("git", "add", "-A", cwd=project)
    sh("git", "commit", "-qm", "reproduced", cwd=project)
    before = len(mlflow_runs(project))
    k4 = sh("dvc", "exp", "run", "-n", "k4", "-S", "train.kmeans.n_clusters=4", cwd=project)
    # only k changed: train takes the PCA fitted by an earlier run from .imgclust/cache/train
    assert "train: PCA cache (.imgclust/cache/train): hit" in k4.stdout + k4.stderr
    sh("dvc", "exp", "run", "--temp", "-n", "pca20", "-S", "train.pca.n_components=20", cwd=project)
    runs = mlflow_runs(project)
    assert len(runs) == before + 2
    by_exp = {r["tags"].get("dvc_exp_name"): r for r in runs}
    assert by_exp["k4"]["params"]["train.kmeans.n_clusters"] == "4"
    assert by_exp["k4"]["metrics"]["train_n_clusters_found"] == 4
    assert by_exp["pca20"]["params"]["train.pca.n_components"] == "20"
    # the --temp run ran in a copy under .dvc/tmp but logged to this project's store
    assert not list((project / ".dvc" / "tmp").rglob("mlflow.db"))
    exps = sh("dvc", "exp", "show", "--json", cwd=project).stdout
    assert "k4" in exps and "pca20" in exps


def test_external_source_change_is_detected(tmp_path, busi_sample):
    source = tmp_path / "dataset"
    shutil.copytree(busi_sample, source)
    root = make_project(tmp_path / "project", data__source=str(source), resize__width=64, resize__height=64)
    sh("dvc", "repro", "strip_masks", cwd=root)
    report = json.loads((root / "reports" / "strip_masks.json").read_text())
    assert report["n_images"] == 63 and report["n_masks"] == 68
    assert not [p for p in Pack(root / "data" / "stripped").paths() if "_mask" in p]
    assert "up to date" in sh("dvc", "status", "ingest", cwd=root).stdout
    first = next((source / "benign").glob("benign (1).png"))
    Image.open(first).rotate(90).save(first)
    status = sh("dvc", "status", "ingest", cwd=root).stdout
    assert "ingest" in status and "modified" in status
