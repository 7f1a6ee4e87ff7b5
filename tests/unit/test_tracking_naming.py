"""tracking and reproduce without git, dvc or a subprocess: where the MLflow store is, experiments,
dvc.lock tags, MLflow names (flatten / param_value / parse_param_value / split_metrics), restoring a
run's parameters and comparing a re-run, and one ``log_run`` into a real SQLite store in tmp_path."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml

from imgclust.errors import ImgclustError, ParamError
from imgclust.tools import reproduce
from imgclust.tracking import naming, runs, store
from support.paths import REPO

# ---------------------------------------------------------------- project_root, local_store, configure


def test_project_root_honours_dvc_root(isolated_mlflow, tmp_path):
    (tmp_path / "here").mkdir()
    (tmp_path / "here" / "dvc.yaml").write_text("stages: {}\n")
    main = tmp_path / "main"
    main.mkdir()
    isolated_mlflow.setenv("DVC_ROOT", str(tmp_path / "main" / ".." / "main"))
    assert store.project_root(tmp_path / "here") == main.resolve()
    assert store.project_root() == main.resolve()


def test_project_root_finds_dvc_yaml_upwards(isolated_mlflow, tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    assert store.project_root(deep) == tmp_path.resolve()
    assert store.project_root(tmp_path) == tmp_path.resolve()
    isolated_mlflow.chdir(deep)
    assert store.project_root() == tmp_path.resolve()


def test_project_root_finds_dvc_folder_and_nearest_wins(isolated_mlflow, tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    inner = tmp_path / "inner"
    (inner / ".dvc").mkdir(parents=True)
    (inner / "src").mkdir()
    assert store.project_root(inner / "src") == inner.resolve()


def test_project_root_without_marker_is_the_start(isolated_mlflow, tmp_path):
    start = tmp_path / "x" / "y"
    start.mkdir(parents=True)
    assert store.project_root(start) == start.resolve()


def test_local_store(tmp_path):
    uri, artifacts = store.local_store(tmp_path)
    assert uri == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert artifacts == (tmp_path / "mlruns" / "artifacts").as_uri()
    assert artifacts.startswith("file:///")


def test_configure_defaults_to_the_local_store(isolated_mlflow, tmp_path):
    import mlflow

    uri, artifacts = store.configure(root=tmp_path)
    assert (uri, artifacts) == store.local_store(tmp_path)
    assert (tmp_path / "mlruns").is_dir()
    assert mlflow.get_tracking_uri() == uri


def test_configure_uses_dvc_root_when_no_root_given(isolated_mlflow, tmp_path):
    import mlflow

    isolated_mlflow.setenv("DVC_ROOT", str(tmp_path))
    isolated_mlflow.chdir(REPO)
    uri, artifacts = store.configure()
    assert (uri, artifacts) == store.local_store(tmp_path)
    assert mlflow.get_tracking_uri() == uri


def test_configure_honours_mlflow_tracking_uri(isolated_mlflow, tmp_path):
    import mlflow

    wanted = f"sqlite:///{tmp_path}/elsewhere.db"
    isolated_mlflow.setenv("MLFLOW_TRACKING_URI", wanted)
    assert store.configure(root=tmp_path / "project") == (wanted, None)
    assert mlflow.get_tracking_uri() == wanted
    assert not (tmp_path / "project").exists()


# ---------------------------------------------------------------- experiments


def test_get_or_create_experiment_is_idempotent(isolated_mlflow, tmp_path):
    import mlflow

    store.configure(root=tmp_path)
    artifacts = store.local_store(tmp_path)[1]
    first = store.get_or_create_experiment("exp-a", artifacts)
    assert store.get_or_create_experiment("exp-a", artifacts) == first
    assert store.get_or_create_experiment("exp-a", None) == first
    other = store.get_or_create_experiment("exp-b", artifacts)
    assert other != first
    client = mlflow.MlflowClient()
    names = sorted(e.name for e in client.search_experiments())
    assert names.count("exp-a") == 1 and names.count("exp-b") == 1
    experiment = client.get_experiment(first)
    assert experiment.name == "exp-a"
    assert experiment.artifact_location == artifacts  # the project store's artifact root, as given


def test_get_or_create_experiment_tolerates_a_concurrent_creator(isolated_mlflow, tmp_path):
    """Another process creates the experiment between our lookup and our create: the real store
    refuses the duplicate, and the function returns the other process's experiment."""
    import mlflow

    store.configure(root=tmp_path)
    existing = mlflow.MlflowClient().create_experiment("race")
    real_lookup = mlflow.MlflowClient.get_experiment_by_name
    calls = []

    def stale_first_lookup(self, name):
        calls.append(name)
        return None if len(calls) == 1 else real_lookup(self, name)

    isolated_mlflow.setattr(mlflow.MlflowClient, "get_experiment_by_name", stale_first_lookup)
    assert store.get_or_create_experiment("race", None) == existing
    assert calls == ["race", "race"]


# ---------------------------------------------------------------- tags


def test_dvc_lock_hashes_only_data_stages(tmp_path, fake_dvc_lock):
    fake_lock, fake_tags = fake_dvc_lock
    lock = tmp_path / "dvc.lock"
    lock.write_text(yaml.safe_dump(fake_lock, sort_keys=False))
    assert runs.dvc_lock_hashes(lock) == fake_tags


def test_dvc_lock_hashes_real_lock_file_format(tmp_path):
    """The repository's own dvc.lock (written by DVC) parses to tags of data stages only."""
    lock = REPO / "dvc.lock"
    if not lock.is_file():
        pytest.skip("no dvc.lock in the repository")
    tags = runs.dvc_lock_hashes(lock)
    assert tags, "dvc.lock lists data stage outputs"
    stages = {key.split(".")[1] for key in tags}
    assert stages <= set(naming.DATA_STAGES_WITH_HASHES)
    assert all(len(v.removesuffix(".dir")) == 32 for v in tags.values())


def test_dvc_lock_hashes_missing_or_empty(tmp_path):
    assert runs.dvc_lock_hashes(tmp_path / "dvc.lock") == {}
    (tmp_path / "dvc.lock").write_text("")
    assert runs.dvc_lock_hashes(tmp_path / "dvc.lock") == {}
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n")
    assert runs.dvc_lock_hashes(tmp_path / "dvc.lock") == {}


def test_dvc_tags(isolated_mlflow):
    assert runs.dvc_tags() == {}
    isolated_mlflow.setenv("DVC_EXP_NAME", "brisk-bank")
    isolated_mlflow.setenv("DVC_EXP_BASELINE_REV", "abc123")
    assert runs.dvc_tags() == {"dvc_exp_name": "brisk-bank", "dvc_baseline_rev": "abc123"}


def test_flatten():
    params = {
        "protocol": "honest",
        "train": {"pca": {"n_components": 50, "whiten": False}, "kmeans": {"n_clusters": 3}},
        "augment": {"ops": ["rot180", "flip_lr"]},
        "none": None,
        "empty": {},
    }
    assert naming.flatten(params) == {
        "protocol": "honest",
        "train.pca.n_components": 50,
        "train.pca.whiten": False,
        "train.kmeans.n_clusters": 3,
        "augment.ops": ["rot180", "flip_lr"],
        "none": None,
    }
    assert naming.flatten({"a": {"b": 1}}, "p.") == {"p.a.b": 1}


def test_flatten_repository_params():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    flat = naming.flatten(params)
    assert flat["train.pca.n_components"] == params["train"]["pca"]["n_components"]
    assert flat["featurize.cnn.backbone"] == params["featurize"]["cnn"]["backbone"]
    assert not any(isinstance(v, dict) for v in flat.values())


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
    logged = {k: ("null" if v is None else str(v)) for k, v in naming.flatten(wanted).items()}
    assert logged == {k: naming.param_value(v) for k, v in naming.flatten(wanted).items()}
    params, changed = reproduce.restore_params(base, logged)
    assert params == wanted
    assert set(changed) == {
        "train.kmeans.n_clusters",
        "train.pca.whiten",
        "split.test_size",
        "featurize.cnn.weights",
        "strip_masks.patterns",
        "data.source",
    }
    assert changed["train.kmeans.n_clusters"] == (3, 5)
    # nothing logged differs: the commit's params are left exactly as they are
    same = {k: ("null" if v is None else str(v)) for k, v in naming.flatten(base).items()}
    assert reproduce.restore_params(base, same) == (base, {})


def test_restore_params_creates_keys_the_commit_lacks():
    params, changed = reproduce.restore_params(
        {"train": {"kmeans": {"n_clusters": 3}}},
        {"train.kmeans.n_clusters": "3", "train.kmeans.algorithm": "elkan", "evaluate.thumbnails": "4"},
    )
    assert params == {"train": {"kmeans": {"n_clusters": 3, "algorithm": "elkan"}}, "evaluate": {"thumbnails": 4}}
    assert set(changed) == {"train.kmeans.algorithm", "evaluate.thumbnails"}


def test_compare_and_check_report_every_difference(tmp_path):
    metrics_json = {"train": {"ari": 0.5, "silhouette": None}, "test": {"ari": 0.25, "nmi": 0.7}}
    reproduced = naming.split_metrics(metrics_json)
    assert reproduced == {"train_ari": 0.5, "test_ari": 0.25, "test_nmi": 0.7}
    checks = reproduce.compare_values(
        {"train_ari": 0.5 + 1e-12, "test_ari": 0.3, "test_ami": 0.1}, reproduced, tolerance=1e-9
    )
    verdict = {c.name: c.match for c in checks}
    assert verdict == {"train_ari": True, "test_ari": False, "test_ami": False, "test_nmi": False}
    hashes = reproduce.compare_values({"data.ingest.data/raw": "a.dir"}, {"data.ingest.data/raw": "b.dir"})
    result = reproduce.ReproduceResult(
        run_id="r1",
        repo="repo",
        workdir=tmp_path,
        git_commit="c" * 40,
        git_dirty=True,
        params_restored={},
        source_rewritten=None,
        pulled=None,
        metrics=checks,
        hashes=hashes,
        new_run_id=None,
    )
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


def test_parse_param_value():
    assert naming.parse_param_value("4") == 4
    assert naming.parse_param_value("0.1") == 0.1
    assert naming.parse_param_value("False") is False
    assert naming.parse_param_value("null") is None
    assert naming.parse_param_value("['a', 'b=c+d']") == ["a", "b=c+d"]
    assert naming.parse_param_value("honest") == "honest"
    assert naming.parse_param_value("007", current="abc") == "007"
    assert naming.parse_param_value("inf") == "inf"  # YAML 1.1 spells infinity .inf
    assert naming.parse_param_value("{'a': 1}") == {"a": 1}


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


def test_evaluate_outputs_follow_the_checked_out_dvc_yaml(tmp_path):
    """reproduce reads the re-run's metrics and run id where the commit's dvc.yaml puts them."""
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    assert reproduce._evaluate_outputs(tmp_path) == (
        tmp_path / "evaluation" / "metrics.json",
        tmp_path / "evaluation" / "mlflow_run.json",
    )


# ---------------------------------------------------------------- log_run into a real SQLite store


@pytest.mark.slow  # fits and logs two models into a new MLflow store
@pytest.mark.parametrize("in_process", [True, False], ids=["in-process", "helper-process"])
def test_log_run_into_a_sqlite_store_round_trips(isolated_mlflow, tmp_path, in_process):
    """One log_run into <tmp>/mlruns, in this process and through RunLogger's helper process (what
    the evaluate stage uses): the params come back (parse_param_value) as they were given, the
    metrics, tags, artifacts and cluster classes as logged, and both models predict like the fitted
    pipeline."""
    import mlflow
    from PIL import Image

    from imgclust.core.clustering import fit_model
    from imgclust.core.extractors import ImageLoader, PixelFeatures, image_pipeline

    rng = np.random.default_rng(0)
    images = np.concatenate([rng.integers(0, 60, (8, 8, 8)), rng.integers(190, 256, (8, 8, 8))]).astype(np.uint8)
    paths = []
    for i, array in enumerate(images):
        paths.append(tmp_path / "images" / f"img{i}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(array).save(paths[-1])
    features = images.reshape(len(images), -1)
    is_train = np.arange(len(images)) % 4 != 0
    model = fit_model(
        features,
        is_train,
        method="pixels",
        pca={"n_components": 2, "whiten": False, "svd_solver": "full"},
        kmeans={"n_clusters": 2, "n_init": 3, "random_state": 0},
        scalable={"threshold": 0, "batch_size": 8},
        pca_on_all=False,
    )
    expected = model.predict(features)
    params = {
        "protocol": "honest",
        "train": {"pca": {"n_components": 2, "whiten": False}},
        "featurize": {"cnn": {"weights": None}},
        "augment": {"ops": ["rot180", "flip_lr"]},
        "data": {"source": "1.5", "sha256": ""},
    }
    (tmp_path / "metrics.json").write_text(json.dumps({"test": {"ari": 0.75}}))
    with runs.RunLogger(root=tmp_path, in_process=in_process) as logger:
        info = logger.log_run(
            experiment="unit-exp",
            params=params,
            metrics={"test_ari": 0.75, "train_ari": 1.0},
            tags={"featurize.method": "pixels", naming.KIND_TAG: naming.PIPELINE_KIND, "data.x.y": "a" * 32},
            artifacts=[tmp_path / "metrics.json", tmp_path / "missing.json"],
            cluster_classes={"0": "benign", "1": "normal"},
            summary={"features": {"method": "pixels"}},
            model=model,
            model_input_example=features[:2],
            image_pipeline=image_pipeline(ImageLoader(8, 8, "gray", "lanczos"), PixelFeatures(), model),
        )

    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert info["tracking_uri"] == uri and (tmp_path / "mlruns" / "mlflow.db").is_file()
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(info["run_id"])
    assert run.info.experiment_id == info["experiment_id"] and run.info.status == "FINISHED"
    assert client.get_experiment(info["experiment_id"]).name == "unit-exp"
    flat = naming.flatten(params)
    assert run.data.params == {k: naming.param_value(v) for k, v in flat.items()}
    assert {k: naming.parse_param_value(v, flat[k]) for k, v in run.data.params.items()} == flat
    assert run.data.metrics == {"test_ari": 0.75, "train_ari": 1.0}
    assert run.data.tags["featurize.method"] == "pixels" and run.data.tags["data.x.y"] == "a" * 32
    assert run.data.tags[naming.KIND_TAG] == naming.PIPELINE_KIND
    assert {naming.model_uri_tag(name) for name in naming.MODEL_ARTIFACTS} <= set(run.data.tags)
    files = {item.path for item in client.list_artifacts(info["run_id"])}
    assert {"metrics.json", naming.SUMMARY_ARTIFACT, naming.CLUSTER_CLASSES_ARTIFACT} <= files
    assert "missing.json" not in files
    models = client.search_logged_models(experiment_ids=[info["experiment_id"]])
    assert sorted(m.name for m in models) == ["image_model", "model"]

    mlflow.set_tracking_uri(uri)
    assert store.cluster_classes(info["run_id"]) == {0: "benign", 1: "normal"}
    feature_model = store.load_model(run.data.tags[naming.model_uri_tag("model")])
    assert np.asarray(feature_model.predict(features)).ravel().tolist() == expected.tolist()
    import pandas as pd

    image_model = store.load_model(f"runs:/{info['run_id']}/image_model")
    predicted = image_model.predict(pd.DataFrame({"path": [str(p) for p in paths]}))
    assert np.asarray(predicted).ravel().tolist() == expected.tolist()
