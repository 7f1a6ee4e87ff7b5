"""Logging to MLflow: one run per pipeline execution (``log_run``), one per k scan (``log_scan``).

Each run records the process that logs it (pid, its start time and host); before logging a
pipeline run, runs of the experiment still RUNNING whose process on this host is gone (killed
mid-logging) are marked FAILED.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import yaml

from imgclust.core.parallel import start_helper
from imgclust.errors import ImgclustError, TrackingError
from imgclust.tracking.naming import (
    CLUSTER_CLASSES_ARTIFACT,
    DATA_SOURCE_TAG,
    DATA_STAGES_WITH_HASHES,
    DATA_TAG_PREFIX,
    DATA_VERSION_OUTPUT,
    DATA_VERSION_TAG,
    DATASET_TAG,
    DVC_ENV_TAGS,
    FAILED_REASON_TAG,
    GIT_COMMIT_TAG,
    GIT_DIRTY_TAG,
    HOST_TAG,
    K_SCAN_KIND,
    KIND_TAG,
    METHOD_TAG,
    PID_NAMESPACE_TAG,
    PID_START_TAG,
    PID_TAG,
    PIPELINE_KIND,
    SUMMARY_ARTIFACT,
    dataset_digest,
    dataset_input_name,
    dataset_name,
    flatten,
    model_uri_tag,
    param_value,
    set_dotted,
)
from imgclust.tracking.store import configure, experiment_name, get_or_create_experiment, store_lock, tracking_errors

HELPER_EXIT_S = 10  # how long RunLogger waits for its helper to exit before killing it

log = logging.getLogger(__name__)


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, /proc/PID/stat field 22); None
    where there is no /proc. With the pid it tells a process from a later one given the same pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19] if fields[0] != "Z" else "zombie"


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def process_tags() -> dict[str, str]:
    """Tags naming this process: its pid, start time and pid namespace (Linux) and host."""
    tags = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
    for tag, value in ((PID_START_TAG, _process_start(os.getpid())), (PID_NAMESPACE_TAG, _pid_namespace())):
        if value:
            tags[tag] = value
    return tags


def process_gone(pid: int, start: str | None) -> bool:
    """Whether process ``pid`` of this host has ended (a zombie has; so has one whose pid now
    belongs to a process started at another time than ``start``)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    now = _process_start(pid)
    return now == "zombie" or bool(start and now and now != start)


def fail_dead_runs(experiment_id: str) -> list[str]:
    """Mark FAILED the runs of ``experiment_id`` left RUNNING by a process of this host (and pid
    namespace) that has ended (killed while logging); return their ids. Runs of other hosts or
    containers, of live processes, and runs without the process tags (logged by something else)
    are left as they are."""
    import mlflow

    client = mlflow.MlflowClient()
    host, namespace = socket.gethostname(), _pid_namespace()
    failed = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        pid = tags.get(PID_TAG, "")
        if tags.get(HOST_TAG) != host or tags.get(PID_NAMESPACE_TAG, namespace) != namespace:
            continue  # another machine, or another container of this one: its pids mean nothing here
        if not pid.isdigit() or not process_gone(int(pid), tags.get(PID_START_TAG)):
            continue
        client.set_tag(
            run.info.run_id, FAILED_REASON_TAG, f"process {pid} on {host} ended while the run was RUNNING (killed)"
        )
        client.set_terminated(run.info.run_id, "FAILED")
        log.warning("MLflow run %s was left RUNNING by process %s, which is gone: marked FAILED", run.info.run_id, pid)
        failed.append(run.info.run_id)
    return failed


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
    return {GIT_COMMIT_TAG: commit, GIT_DIRTY_TAG: str(bool(status)).lower()}


def _lock_stages(lock_path: Path) -> dict:
    lock_path = Path(lock_path)
    if not lock_path.is_file():
        return {}
    # libyaml's safe loader where PyYAML has it: 7x faster on dvc.lock, read several times per run
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return (yaml.load(lock_path.read_text(), Loader=loader) or {}).get("stages") or {}


def dvc_lock_hashes(lock_path: Path) -> dict[str, str]:
    """``data.<stage>.<out path>`` -> content hash of each data stage's outputs in dvc.lock."""
    tags = {}
    for stage, entry in _lock_stages(lock_path).items():
        if stage not in DATA_STAGES_WITH_HASHES:
            continue
        for out in entry.get("outs", []):
            digest = out.get("md5") or out.get("etag") or out.get("checksum")
            if digest:
                tags[f"{DATA_TAG_PREFIX}{stage}.{out['path']}"] = digest
    return tags


def dvc_lock_params(lock_path: Path) -> dict:
    """The parameters the stages recorded in dvc.lock, merged into one nested dict: what the
    pipeline's outputs were made with. DVC writes each stage's entry as soon as the stage ran, so
    during ``dvc repro`` evaluate sees those of every stage before it."""
    merged: dict = {}
    for entry in _lock_stages(lock_path).values():
        for values in (entry.get("params") or {}).values():  # one mapping per params file
            for key, value in values.items():
                set_dotted(merged, key, value)
    return merged


def dataset_of(lock_path: Path) -> dict[str, str] | None:
    """{name, version, source} of the data the pipeline last ran on: ``data.source`` and the content
    hash of ingest's data/raw as recorded in dvc.lock; None before ingest has run."""
    stage, out_path = DATA_VERSION_OUTPUT
    entry = _lock_stages(lock_path).get(stage) or {}
    version = next(
        (
            out.get("md5") or out.get("etag") or out.get("checksum")
            for out in entry.get("outs", [])
            if out["path"] == out_path
        ),
        None,
    )
    source = dvc_lock_params(lock_path).get("data", {}).get("source")
    if not version or not source:
        return None
    return {"name": dataset_name(str(source)), "version": str(version), "source": str(source)}


def dataset_tags(dataset: dict | None) -> dict[str, str]:
    if not dataset:
        return {}
    return {DATASET_TAG: dataset["name"], DATA_VERSION_TAG: dataset["version"], DATA_SOURCE_TAG: dataset["source"]}


DATASET_LOG_ATTEMPTS = 3


def _log_datasets(run_id: str, dataset: dict, profiles: dict[str, dict]) -> None:
    """One MLflow dataset input per context (train, test): the UI's Dataset column, its filters
    (``dataset.name``, ``dataset.digest``, ``dataset.context``) and the run page's Datasets show it."""
    import json

    import mlflow
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    is_url = dataset["source"].split(":", 1)[0].lower() in ("http", "https")
    source_type, source = ("http", {"url": dataset["source"]}) if is_url else ("local", {"uri": dataset["source"]})
    inputs = [
        DatasetInput(
            Dataset(
                name=dataset_input_name(dataset["name"], context),
                digest=dataset_digest(dataset["version"]),
                source_type=source_type,
                source=json.dumps(source),
                profile=json.dumps(profile),
            ),
            tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)],
        )
        for context, profile in profiles.items()
    ]
    if not inputs:
        return
    # The store adds a dataset it does not hold yet by looking it up, then inserting it: two runs
    # logging the same new dataset at once (two clones, one server) race there, and the loser's insert
    # fails on the unique key. By then the dataset exists, so trying again links it.
    for attempt in range(DATASET_LOG_ATTEMPTS):
        try:
            mlflow.MlflowClient().log_inputs(run_id, datasets=inputs)
            return
        except MlflowException as exc:
            message = str(exc).lower()
            if attempt + 1 == DATASET_LOG_ATTEMPTS or not ("unique" in message or "duplicate key" in message):
                raise
            time.sleep(0.2 * (attempt + 1))


def dvc_tags() -> dict[str, str]:
    return {tag: os.environ[env] for env, tag in DVC_ENV_TAGS.items() if os.environ.get(env)}


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


def pipeline_tags(method: str, cwd: Path, lock_path: Path) -> dict[str, str]:
    """The tags of a pipeline run: its kind and feature method, git commit, DVC experiment and the
    content hash of every data output in dvc.lock."""
    return {
        **git_tags(cwd),
        **dvc_tags(),
        **dvc_lock_hashes(lock_path),
        **dataset_tags(dataset_of(lock_path)),
        METHOD_TAG: method,
        KIND_TAG: PIPELINE_KIND,
    }


def log_run(
    *,
    experiment: str | None,
    params: dict,
    metrics: dict[str, float],
    tags: dict[str, str],
    artifacts: list[Path],
    cluster_classes: dict,
    summary: dict,
    model,
    model_input_example: np.ndarray,
    image_pipeline,
    weights_file: str | None = None,
    root: Path | None = None,
    run_name: str | None = None,
    dataset: dict | None = None,
    dataset_profiles: dict[str, dict] | None = None,
    extra_dicts: dict[str, dict] | None = None,
) -> dict:
    """Log one pipeline execution as one MLflow run and return {run_id, experiment_id, tracking_uri}.

    Two models are logged: ``model`` (mlflow.sklearn, features -> cluster) and ``image_model``
    (pyfunc, image paths -> cluster) built from the same fitted estimators. ``dataset`` (see
    ``dataset_of``) with ``dataset_profiles`` (context -> profile) is logged as dataset inputs.
    """
    uri, artifact_root = configure(root)
    with tracking_errors(), store_lock(uri):
        return _log_run(
            uri,
            artifact_root,
            experiment=experiment_name(experiment),
            params=params,
            metrics=metrics,
            tags=tags,
            artifacts=artifacts,
            dicts={SUMMARY_ARTIFACT: summary, CLUSTER_CLASSES_ARTIFACT: cluster_classes, **(extra_dicts or {})},
            model=model,
            model_input_example=model_input_example,
            image_pipeline=image_pipeline,
            weights_file=weights_file,
            run_name=run_name,
            dataset=dataset,
            dataset_profiles=dataset_profiles or {},
        )


def _import_mlflow() -> None:
    """What logging a run imports: MLflow, its SQL store, the model flavours and skops (which brings
    scikit-learn). About 3.8 s of a 6 s evaluate stage on busi256; no file is read or written."""
    import mlflow.pyfunc  # noqa: F401
    import mlflow.sklearn  # noqa: F401
    import pandas  # noqa: F401
    import skops.io  # noqa: F401
    from mlflow.store.tracking import sqlalchemy_store  # noqa: F401


def _serve_log_run(conn, root: Path | None) -> None:
    """The helper process of ``RunLogger``: import MLflow, then log the one run it is sent."""
    with contextlib.suppress(Exception):  # log_run imports the same and reports what fails
        _import_mlflow()
    try:
        kwargs = conn.recv()
    except EOFError:  # the caller logs nothing (it failed first)
        return
    try:
        outcome = ("ok", log_run(root=root, **kwargs))
    except ImgclustError as exc:
        outcome = ("error", exc)
    except Exception:  # a bug: its traceback, for the caller to show
        outcome = ("failed", traceback.format_exc())
    conn.send(outcome)


class RunLogger:
    """``log_run`` in a helper process started at once, which imports MLflow while the caller still
    computes what it logs: on two cores those imports (about 3.8 s) then cost the caller little wall
    time. Where this process has imported MLflow already (tests, a notebook), or ``in_process`` says
    so, the run is logged here instead.

    A context manager: on leaving, a helper that was sent nothing is killed (it has written nothing),
    as is one still logging (the caller was interrupted), whose run stays RUNNING until
    ``fail_dead_runs`` marks it FAILED."""

    def __init__(self, root: Path | None = None, in_process: bool | None = None):
        self._root = root
        self._process = None
        self._answered = False
        if in_process is None:
            in_process = "mlflow.sklearn" in sys.modules
        if not in_process:
            import multiprocessing

            self._conn, child = multiprocessing.get_context("spawn").Pipe()
            self._process = start_helper(_serve_log_run, child, root)
            child.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def log_run(self, **kwargs) -> dict:
        """As ``log_run`` (the same keyword arguments, ``root`` given at construction)."""
        if self._process is None:
            return log_run(root=self._root, **kwargs)
        try:
            self._conn.send(kwargs)
            outcome, value = self._conn.recv()
            self._answered = True
        except (EOFError, OSError) as exc:
            self._process.join(HELPER_EXIT_S)
            raise TrackingError(
                f"the process logging the run to MLflow ended without a result (exit code "
                f"{self._process.exitcode}); run the evaluate stage again (dvc repro)"
            ) from exc
        if outcome == "ok":
            return value
        if outcome == "error":
            raise value
        raise RuntimeError(f"logging the run to MLflow failed in the helper process:\n{value}")

    def close(self) -> None:
        if self._process is None:
            return
        self._conn.close()
        if self._answered:  # it logged the run and is ending: let it run its exit handlers
            self._process.join(HELPER_EXIT_S)
        if self._process.is_alive():  # sent nothing (nothing written yet), or interrupted while logging
            self._process.kill()
        self._process.join()


# MLflow log lines that are advice for other set-ups, not news for this run: the image model is a
# PythonModel logged on purpose (its loader is imgclust's code, see robustness.md), and uv-made
# environments have no pip for MLflow to ask its version; copying uv.lock into each model is routine.
QUIET_MLFLOW_MESSAGES = (
    "serialized using CloudPickle",
    "Failed to resolve installed pip version",
    "to model artifacts",
)


class _DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in QUIET_MLFLOW_MESSAGES)


def quiet_mlflow() -> None:
    """Drop MLflow's advice lines (``QUIET_MLFLOW_MESSAGES``)."""
    for name in ("mlflow.pyfunc", "mlflow.utils.environment", "mlflow.utils.uv_utils"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropAdvice) for f in logger.filters):
            logger.addFilter(_DropAdvice())


def _log_artifacts(artifacts: list[Path]) -> None:
    import mlflow

    for path in artifacts:
        if Path(path).is_dir():
            mlflow.log_artifacts(str(path), Path(path).name)
        elif Path(path).is_file():
            mlflow.log_artifact(str(path))


def _log_run(
    uri,
    artifact_root,
    *,
    experiment,
    params,
    metrics,
    tags,
    artifacts,
    dicts,
    model,
    model_input_example,
    image_pipeline,
    weights_file,
    run_name,
    dataset,
    dataset_profiles,
) -> dict:
    import tempfile
    import warnings

    import joblib
    import mlflow
    import mlflow.pyfunc
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature

    import imgclust
    from imgclust.core.clusterers import CentroidClusterer
    from imgclust.core.scaling import PixelScaler
    from imgclust.tracking.image_model import ImageClusterModel

    quiet_mlflow()
    experiment_id = get_or_create_experiment(experiment, artifact_root)
    fail_dead_runs(experiment_id)
    with_keras = type(image_pipeline.named_steps["features"]).__name__ == "KerasFeatureExtractor"
    requirements = _pip_requirements(with_keras)
    code_paths = [str(Path(imgclust.__file__).parent)]
    with (
        mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags={**tags, **process_tags()}) as run,
        warnings.catch_warnings(),
    ):
        # MLflow's advice on type hints and input examples does not apply to these models
        warnings.simplefilter("ignore", UserWarning)
        mlflow.log_params({k: param_value(v) for k, v in flatten(params).items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        if dataset:
            _log_datasets(run.info.run_id, dataset, dataset_profiles)
        for name, content in dicts.items():
            mlflow.log_dict(content, name)
        _log_artifacts(artifacts)
        example = np.asarray(model_input_example)
        feature_model = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(example, model.predict(example)),
            input_example=example,
            pip_requirements=requirements,
            code_paths=code_paths,
            skops_trusted_types=[f"{t.__module__}.{t.__qualname__}" for t in (PixelScaler, CentroidClusterer)],
        )
        with tempfile.TemporaryDirectory() as tmp:
            pipeline_file = Path(tmp) / "image_pipeline.joblib"
            joblib.dump(image_pipeline, pipeline_file)
            model_artifacts = {"pipeline": str(pipeline_file)}
            if weights_file:
                model_artifacts["weights"] = weights_file
            frame = pd.DataFrame({"path": ["image.png"]})
            image_model = mlflow.pyfunc.log_model(
                name="image_model",
                python_model=ImageClusterModel(),
                artifacts=model_artifacts,
                code_paths=code_paths,
                pip_requirements=requirements,
                signature=infer_signature(frame, np.zeros(len(frame), dtype=np.int64)),
            )
        mlflow.set_tags(
            {model_uri_tag("model"): feature_model.model_uri, model_uri_tag("image_model"): image_model.model_uri}
        )
        return {"run_id": run.info.run_id, "experiment_id": experiment_id, "tracking_uri": uri}


def log_scan(rows: list[dict], settings: dict, method: str, artifacts: list[Path], experiment: str | None) -> str:
    """Log a k scan as one MLflow run (kind k_scan), a metric step per k; return its id."""
    import mlflow

    uri, artifact_root = configure()
    with tracking_errors(), store_lock(uri):
        experiment_id = get_or_create_experiment(experiment_name(experiment), artifact_root)
        fail_dead_runs(experiment_id)
        tags = {KIND_TAG: K_SCAN_KIND, METHOD_TAG: method, **git_tags(Path.cwd()), **process_tags()}
        ks = [row["k"] for row in rows]
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"k-scan {min(ks)}-{max(ks)}", tags=tags) as run:
            mlflow.log_params({k: param_value(v) for k, v in flatten(settings).items()})
            for row in rows:  # one step per k, so the MLflow UI draws the curves over k
                mlflow.log_metrics({k: v for k, v in row.items() if k != "k" and v == v}, step=row["k"])
            _log_artifacts(artifacts)
        return run.info.run_id
