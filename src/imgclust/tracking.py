"""MLflow tracking: where the store is, and one run per pipeline execution.

Default store: SQLite at ``<project>/mlruns/mlflow.db`` with artifacts under ``<project>/mlruns/``,
where ``<project>`` is the main repository even when DVC runs an experiment in a temporary copy
(DVC sets ``DVC_ROOT`` to the parent repository there). ``MLFLOW_TRACKING_URI`` overrides it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import numpy as np
import yaml

LOCAL_STORE_DIR = "mlruns"
MODEL_URI_TAG = "imgclust.{}_uri"
KIND_TAG = "imgclust.kind"  # "pipeline" for a pipeline execution, "k_scan" for imgclust scan-k
PIPELINE_RUNS = f"tags.`{KIND_TAG}` = 'pipeline'"
DATA_STAGES_WITH_HASHES = ("ingest", "strip_masks", "resize", "split", "augment", "featurize")


def project_root(start: Path | None = None) -> Path:
    """``DVC_ROOT`` when DVC runs the stage, else the nearest folder holding dvc.yaml or .dvc."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").exists() or (folder / ".dvc").is_dir():
            return folder
    return here


def local_store(root: Path) -> tuple[str, str]:
    """(tracking URI, artifact root URI) of the project's local store."""
    store = Path(root) / LOCAL_STORE_DIR
    return f"sqlite:///{store / 'mlflow.db'}", (store / "artifacts").as_uri()


@contextlib.contextmanager
def tracking_errors():
    """Turn MLflow's failures (store unreachable, refused request) into a TrackingError that names
    the store and the way to change it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from imgclust.errors import TrackingError

    try:
        yield
    except (MlflowException, ConnectionError, OSError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        raise TrackingError(f"MLflow store {mlflow.get_tracking_uri()} failed: {message.splitlines()[0] if message else exc!r}. "
                            "Check MLFLOW_TRACKING_URI (unset it to use the project's mlruns/mlflow.db).") from exc


@contextlib.contextmanager
def store_lock(uri: str):
    """Serialise writers of a local SQLite store: parallel queued experiments would otherwise race
    on creating its schema and experiment and on SQLite's single writer. No-op for servers."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    from filelock import FileLock

    db = Path(uri.removeprefix("sqlite:///"))
    with FileLock(str(db.with_name(db.name + ".lock")), timeout=600):
        yield


def configure(root: Path | None = None) -> tuple[str, str | None]:
    """Point MLflow at ``MLFLOW_TRACKING_URI`` or the project's local store; return
    (tracking URI, artifact root or None when the server decides)."""
    import mlflow

    if os.environ.get("MLFLOW_TRACKING_URI"):
        uri, artifacts = os.environ["MLFLOW_TRACKING_URI"], None
    else:
        root = project_root() if root is None else Path(root)
        (root / LOCAL_STORE_DIR).mkdir(parents=True, exist_ok=True)
        uri, artifacts = local_store(root)
    mlflow.set_tracking_uri(uri)
    return uri, artifacts


def experiment_name(given: str | None = None, params_file: Path = Path("params.yaml")) -> str:
    """``given``, else ``mlflow.experiment_name`` of the project's params.yaml, else "imgclust"."""
    if given:
        return given
    if Path(params_file).is_file():
        params = yaml.safe_load(Path(params_file).read_text()) or {}
        return (params.get("mlflow") or {}).get("experiment_name") or "imgclust"
    return "imgclust"


def get_or_create_experiment(name: str, artifact_location: str | None) -> str:
    """Experiment id by name; creating it tolerates a concurrent creator (parallel queued runs)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def git_tags(cwd: Path) -> dict[str, str]:
    commit = _git(["rev-parse", "HEAD"], cwd)
    if commit is None:
        return {}
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd) or ""
    return {"git_commit": commit, "git_dirty": str(bool(status)).lower()}


def dvc_lock_hashes(lock_path: Path) -> dict[str, str]:
    """``data.<stage>.<out path>`` -> content hash of each data stage's outputs in dvc.lock."""
    lock_path = Path(lock_path)
    if not lock_path.is_file():
        return {}
    lock = yaml.safe_load(lock_path.read_text()) or {}
    tags = {}
    for stage, entry in (lock.get("stages") or {}).items():
        if stage not in DATA_STAGES_WITH_HASHES:
            continue
        for out in entry.get("outs", []):
            digest = out.get("md5") or out.get("etag") or out.get("checksum")
            if digest:
                tags[f"data.{stage}.{out['path']}"] = digest
    return tags


def dvc_tags() -> dict[str, str]:
    tags = {}
    for env, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_baseline_rev")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def flatten(params: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _pip_requirements(with_keras: bool) -> list[str]:
    """Pinned requirements of the logged models, listed explicitly so logging never calls pip."""
    from importlib.metadata import PackageNotFoundError, version

    names = ["mlflow", "scikit-learn", "numpy", "scipy", "pandas", "pillow", "joblib"]
    if with_keras:
        names += ["keras", "tensorflow-cpu" if _installed("tensorflow-cpu") else "tensorflow"]
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return pins


def _installed(name: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(name)
    except PackageNotFoundError:
        return False
    return True


def log_run(*, experiment_name: str, params: dict, metrics: dict[str, float], tags: dict[str, str],
            artifacts: list[Path], dicts: dict[str, dict], model, model_input_example: np.ndarray,
            image_pipeline, weights_file: str | None = None,
            root: Path | None = None) -> dict:
    """Log one pipeline execution as one MLflow run and return {run_id, experiment_id, tracking_uri}.

    Two models are logged: ``model`` (mlflow.sklearn, features -> cluster) and ``image_model``
    (pyfunc, image paths -> cluster) built from the same fitted estimators.
    """
    uri, artifact_root = configure(root)
    with tracking_errors(), store_lock(uri):
        return _log_run(uri, artifact_root, experiment_name=experiment_name, params=params, metrics=metrics,
                        tags=tags, artifacts=artifacts, dicts=dicts, model=model,
                        model_input_example=model_input_example, image_pipeline=image_pipeline,
                        weights_file=weights_file)


def _log_run(uri, artifact_root, *, experiment_name, params, metrics, tags, artifacts, dicts, model,
             model_input_example, image_pipeline, weights_file) -> dict:
    import tempfile
    import warnings

    import joblib
    import mlflow
    import mlflow.pyfunc
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature

    import imgclust
    from imgclust.features import PixelScaler
    from imgclust.image_model import ImageClusterModel

    experiment_id = get_or_create_experiment(experiment_name, artifact_root)
    with_keras = type(image_pipeline.named_steps["features"]).__name__ == "KerasFeatureExtractor"
    requirements = _pip_requirements(with_keras)
    with mlflow.start_run(experiment_id=experiment_id, tags=tags) as run, warnings.catch_warnings():
        # MLflow's advice on type hints and input examples does not apply to these models
        warnings.simplefilter("ignore", UserWarning)
        flat = {k: ("null" if v is None else v) for k, v in flatten(params).items()}
        mlflow.log_params({k: str(v)[:6000] for k, v in flat.items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        for name, content in dicts.items():
            mlflow.log_dict(content, name)
        for path in artifacts:
            if Path(path).is_dir():
                mlflow.log_artifacts(str(path), Path(path).name)
            elif Path(path).is_file():
                mlflow.log_artifact(str(path))
        example = np.asarray(model_input_example)
        feature_model = mlflow.sklearn.log_model(
            model, name="model", signature=infer_signature(example, model.predict(example)),
            input_example=example, pip_requirements=requirements,
            code_paths=[str(Path(imgclust.__file__).parent)],
            skops_trusted_types=[f"{PixelScaler.__module__}.{PixelScaler.__qualname__}"],
        )
        with tempfile.TemporaryDirectory() as tmp:
            pipeline_file = Path(tmp) / "image_pipeline.joblib"
            joblib.dump(image_pipeline, pipeline_file)
            model_artifacts = {"pipeline": str(pipeline_file)}
            if weights_file:
                model_artifacts["weights"] = weights_file
            frame = pd.DataFrame({"path": ["image.png"]})
            image_model = mlflow.pyfunc.log_model(
                name="image_model", python_model=ImageClusterModel(), artifacts=model_artifacts,
                code_paths=[str(Path(imgclust.__file__).parent)], pip_requirements=requirements,
                signature=infer_signature(frame, np.zeros(len(frame), dtype=np.int64)),
            )
        # MLflow 3 stores models as logged models (models:/m-...); keep their URIs on the run
        mlflow.set_tags({MODEL_URI_TAG.format("model"): feature_model.model_uri,
                         MODEL_URI_TAG.format("image_model"): image_model.model_uri})
        return {"run_id": run.info.run_id, "experiment_id": experiment_id, "tracking_uri": uri}
