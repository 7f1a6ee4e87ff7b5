"""A new local store is a copy of an empty store made once per machine (its schema migrations run
once, not in every project), and behaves as the store MLflow would have created."""

from __future__ import annotations

import mlflow

from imgclust.tracking import store


def test_new_stores_are_copies_of_one_template(tmp_path, monkeypatch):
    # the session's cache (conftest): the template is made once per session, by whichever test is first
    monkeypatch.delenv("DVC_ROOT", raising=False)
    made = {}
    for name in ("first", "second"):
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri sets it
        project = tmp_path / name
        project.mkdir()
        (project / "dvc.yaml").write_text("stages: {}\n")
        monkeypatch.chdir(project)
        uri, artifacts = store.configure()
        template = store.cache_dir() / f"mlflow-{mlflow.__version__}-empty-store.db"
        made[name] = template.stat().st_mtime_ns
        assert store.sqlite_file(uri) == project / "mlruns" / "mlflow.db"
        client = mlflow.MlflowClient()
        # MLflow's Default experiment, added on first opening: this project's location, not the template's
        assert client.get_experiment("0").artifact_location == str(project / "mlruns" / "0")
        experiment = store.get_or_create_experiment("imgclust", artifacts)
        assert experiment == "1"
        assert client.get_experiment(experiment).artifact_location == artifacts
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_param("a", 1)
        assert client.get_run(run.info.run_id).data.params == {"a": "1"}
    assert made["first"] == made["second"]  # made once, copied since


def test_an_unwritable_cache_leaves_store_creation_to_mlflow(tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("a file, not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert store._store_template() is None
    store.seed_new_store(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    assert not (tmp_path / "mlruns").exists()
