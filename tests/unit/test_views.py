"""What users see of a run without MLflow or DVC running: run and dataset names, the stage timing
side file, the training-image checks of predict, the per-checkout settings, the plots' new labels
and the offline page template of `dvc plots show`. The MLflow and DVC side: tests/system/test_views_dvc.py."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from imgclust import config
from imgclust.core import image_profile, plots, stage_log
from imgclust.core.phantoms import MIN_IMAGES
from imgclust.errors import ParamError
from imgclust.tracking import naming
from support.cli import run_cli
from support.paths import REPO
from support.project import write_params

# ------------------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("data/synthetic", "synthetic"),
        ("../shared/datasets/busi-sample/", "busi-sample"),
        ("/abs/Dataset_BUSI_with_GT", "Dataset_BUSI_with_GT"),
        ("https://example.org/sets/flower_photos.tgz", "flower_photos"),
        ("archives/photos.tar.gz", "photos"),
        ("photos.zip", "photos"),
    ],
)
def test_dataset_name_is_the_last_part_of_the_source(source, name):
    assert naming.dataset_name(source) == name


def test_run_name_says_dataset_features_k_and_protocol():
    assert naming.run_name("busi-sample", naming.features_label("pixels"), 3, "honest") == (
        "busi-sample | pixels | k=3 | honest"
    )
    cnn = naming.features_label("cnn", "mobilenet", 0.25)
    assert cnn == "cnn mobilenet a0.25"
    assert naming.features_label("cnn", "resnet50", 1.0) == "cnn resnet50"
    assert naming.run_name(None, cnn, 5, "tutorial") == "unknown data | cnn mobilenet a0.25 | k=5 | tutorial"


def test_train_and_test_inputs_have_distinct_names_and_the_full_data_version_as_digest():
    # MLflow merges dataset inputs of equal name and digest: the contexts must differ in the name
    names = {naming.dataset_input_name("busi", c) for c in naming.DATASET_CONTEXTS}
    assert len(names) == 2
    version = "41ad8fa407edad8ec95b076f30330304.dir"  # an md5 of a folder as dvc.lock writes it
    assert naming.dataset_digest(version) == version


def test_stage_metrics_name_each_stage_and_total():
    metrics = naming.stage_metrics(
        {"featurize": {"wall_s": 2.5, "peak_mb": 300.0}, "train": {"wall_s": 1.25, "peak_mb": 500.0}}
    )
    assert metrics == {
        "time/featurize_s": 2.5,
        "memory/featurize_peak_mb": 300.0,
        "time/train_s": 1.25,
        "memory/train_peak_mb": 500.0,
        "time/total_s": 3.75,
        "memory/peak_mb": 500.0,
    }
    assert naming.stage_metrics({}) == {}


def test_experiment_tags_make_the_ui_open_on_training_runs():
    assert naming.EXPERIMENT_TAGS["mlflow.experimentKind"] == "custom_model_development"
    assert "test_ari" in naming.EXPERIMENT_TAGS["mlflow.note.content"]


# ------------------------------------------------------------------------------ stage timings


def test_stage_log_keeps_the_latest_record_of_each_stage_until_consumed(tmp_path):
    log = tmp_path / ".imgclust" / "stage_times.jsonl"
    stage_log.append({"stage": "train", "wall_s": 9.0, "peak_mb": 1.0}, log)
    stage_log.append({"stage": "train", "wall_s": 2.0, "peak_mb": 3.0}, log)
    stage_log.append({"stage": "featurize", "wall_s": 1.0, "peak_mb": 2.0}, log)
    with open(log, "a") as fh:
        fh.write("not json\n")
    assert stage_log.read(log) == {
        "train": {"wall_s": 2.0, "peak_mb": 3.0},
        "featurize": {"wall_s": 1.0, "peak_mb": 2.0},
    }
    stage_log.consume(log)
    assert stage_log.read(log) == {}


def test_measure_counts_from_process_start():
    record = stage_log.measure("x")
    assert record["stage"] == "x" and record["wall_s"] > 0 and record["peak_mb"] > 10


def test_a_stage_run_by_dvc_appends_its_figures_and_only_then(tmp_path):
    write_params(tmp_path, synthesize__n_images=MIN_IMAGES)
    failed = run_cli("resize", "--in", "nowhere", "--out", "x", cwd=tmp_path, env={"DVC_STAGE": "resize"}, check=False)
    assert failed.returncode == 2 and not (tmp_path / stage_log.STAGE_LOG).exists()  # a failed stage: nothing
    run_cli("synthesize", "--out", "data/synthetic", cwd=tmp_path, env={"DVC_STAGE": "synthesize"})
    records = [json.loads(line) for line in (tmp_path / stage_log.STAGE_LOG).read_text().splitlines()]
    assert [r["stage"] for r in records] == ["synthesize"] and records[0]["wall_s"] > 0


def test_the_side_file_is_git_ignored():
    assert "/.imgclust/" in (REPO / ".gitignore").read_text().splitlines()


# --------------------------------------------------------------------- predict's image checks


def _profile():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(60, 200, size=(16, 16), dtype=np.uint8) for _ in range(5)]
    originals = [{"width": 300 + i, "height": 200, "mode": "RGB"} for i in range(5)]
    model_input = {"width": 16, "height": 16, "color_mode": "gray", "resample": "lanczos"}
    return arrays, image_profile.training_profile(arrays, originals, model_input)


def test_an_image_like_the_training_images_raises_no_warning():
    arrays, profile = _profile()
    assert profile["width"] == [300, 304] and profile["modes"] == ["RGB"] and len(profile["channel_mean"]) == 1
    assert image_profile.differences(profile, 302, 200, "RGB", arrays[2]) == []


def test_size_mode_and_pixel_statistics_outside_the_training_range_are_named():
    _, profile = _profile()
    white = np.full((16, 16), 255, np.uint8)
    found = image_profile.differences(profile, 32, 200, "L", white)
    text = "; ".join(found)
    assert "width 32 px outside the training range 300-304" in text
    assert "mode L not among the training modes RGB" in text
    assert "pixel mean 255.0 outside" in text and "pixel std 0.0 outside" in text
    assert not any("height" in f for f in found)


# -------------------------------------------------------------------------- per-checkout settings


@pytest.fixture
def no_keras_home(monkeypatch):
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    yield
    os.environ.pop("KERAS_HOME", None)


def test_local_settings_provide_keras_home_relative_to_the_project(tmp_path, no_keras_home):
    project = tmp_path / "project"
    (project / ".imgclust").mkdir(parents=True)
    (project / "dvc.yaml").write_text("stages: {}\n")
    (project / ".imgclust" / "local.yaml").write_text("keras_home: ../keras\n")
    (project / "sub").mkdir()
    cwd = Path.cwd()
    os.chdir(project / "sub")  # found from below the project root too
    try:
        applied = config.apply_local_settings()
    finally:
        os.chdir(cwd)
    assert applied == {"KERAS_HOME": str((tmp_path / "keras").resolve())}
    assert os.environ["KERAS_HOME"] == str((tmp_path / "keras").resolve())


def test_the_environment_wins_over_local_settings(tmp_path, monkeypatch):
    (tmp_path / ".imgclust").mkdir()
    (tmp_path / ".imgclust" / "local.yaml").write_text("keras_home: elsewhere\n")
    monkeypatch.setenv("KERAS_HOME", "/set/by/user")
    assert config.apply_local_settings(tmp_path) == {}
    assert os.environ["KERAS_HOME"] == "/set/by/user"


def test_unknown_local_setting_is_refused_with_a_suggestion(tmp_path, no_keras_home):
    (tmp_path / ".imgclust").mkdir()
    (tmp_path / ".imgclust" / "local.yaml").write_text("kerashome: x\n")
    with pytest.raises(ParamError, match=r"local.yaml: unknown setting\(s\) kerashome. Did you mean 'keras_home'"):
        config.apply_local_settings(tmp_path)


# ------------------------------------------------------------------------------------- plots


def test_scatter_axes_name_the_projection():
    assert plots.scatter_axis_labels(True, [0.6, 0.1]) == (
        "PC 1 of the model's PCA (60% of variance)",
        "PC 2 of the model's PCA (10% of variance)",
    )
    assert plots.scatter_axis_labels(False)[0] == "PC 1 of a PCA(2) of the features"


def test_cluster_notes_count_copies_by_op_and_the_majority_share():
    index = [
        {"class": "a", "op": "none"},
        {"class": "a", "op": "rot180"},
        {"class": "b", "op": "rot180"},
        {"class": "a", "op": "flip_lr"},
        {"class": "b", "op": "none"},
    ]
    notes = plots.cluster_notes(index, np.array([0, 0, 0, 0, 1]))
    assert notes[0] == "3 copies: rot180 2, flip_lr 1\nmajority a 75%"
    assert notes[1] == "0 copies\nmajority b 100%"


def test_class_palette_differs_from_the_cluster_palette():
    assert plots._palette(5)[0] != plots._class_palette(5)[0]
    assert len(set(plots._class_palette(5))) == 5


def test_thumbnails_with_notes_and_marked_copies_and_scatter_with_labels(tmp_path):
    rng = np.random.default_rng(0)
    thumbs = {0: [rng.integers(0, 256, (12, 12), dtype=np.uint8) for _ in range(2)]}
    plots.plot_thumbnails(
        thumbs, tmp_path / "t.png", {0: ["a", "a (rot180)"]}, row_notes={0: "1 copies"}, copies_by_cluster={0: [0, 1]}
    )
    xy = rng.normal(size=(30, 2))
    classes = [f"class {i % 5}" for i in range(30)]
    plots.plot_scatter(xy, np.arange(30) % 5, classes, tmp_path / "s.png", axis_labels=("PC 1", "PC 2"))
    for name in ("t.png", "s.png"):
        assert Image.open(tmp_path / name).size[0] > 300


# ------------------------------------------------------------------- dvc plots show, offline


def test_plots_template_is_configured_and_inlines_vega_without_any_remote_script():
    dvc_config = (REPO / ".dvc" / "config").read_text()
    assert re.search(r"^\[plots\]\s*\n\s*html_template = plots/offline.html", dvc_config, re.M)
    page = (REPO / ".dvc" / "plots" / "offline.html").read_text(encoding="utf-8")
    assert page.count("{plot_divs}") == 1
    assert "{scripts}" not in page  # DVC would put its CDN <script src=...> tags there
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)
    for library in ("vega@5.20.2", "vega-lite@5.2.0", "vega-embed@6.18.2"):
        assert f"/*! {library} (npm)" in page
    assert (REPO / ".dvc" / "plots" / "offline.html").stat().st_size < 1_000_000


def test_project_factory_carries_the_template():
    from support.project import PROJECT_FILES

    assert ".dvc/plots/offline.html" in PROJECT_FILES
    assert yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["evaluate"]["deps"].count("data/manifests/raw.csv")


def test_run_description_states_data_scores_and_time():
    text = naming.run_description(
        "busi | pixels | k=3 | honest",
        {"name": "busi", "version": "abc.dir", "source": "../busi"},
        {"train": {"images": 54, "augmented_copies": 22}, "test": {"images": 4, "augmented_copies": 0}},
        {"test_ari": 0.33333, "train_ari": 0.07, "time/total_s": 19.77, "memory/peak_mb": 255.2},
    )
    assert text.splitlines()[0] == "**busi | pixels | k=3 | honest**"
    for part in (
        "`../busi`",
        "`abc.dir`",
        "54 train images (22 augmented copies)",
        "test ARI 0.333",
        "19.8 s",
        "255 MiB",
    ):
        assert part in text
