"""Where the MLflow store is, and how experiments, runs and models are found in it.

Default store: SQLite at ``<project>/mlruns/mlflow.db`` with artifacts under ``<project>/mlruns/``,
where ``<project>`` is the main repository even when DVC runs an experiment in a temporary copy
(DVC sets ``DVC_ROOT`` to the parent repository there). ``MLFLOW_TRACKING_URI`` overrides it.

An existing SQLite store that is empty (0 bytes) or not SQLite is refused, never re-created over;
an http(s) store that does not answer fails within seconds, not minutes (bounded retries).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import sys
import time
from pathlib import Path

from imgclust.errors import ParamError, TrackingError
from imgclust.tracking.naming import (
    CLUSTER_CLASSES_ARTIFACT,
    CLUSTER_SHARES_ARTIFACT,
    DATA_SOURCE_TAG,
    DATA_VERSION_TAG,
    DATASET_TAG,
    DEFAULT_EXPERIMENT,
    EXPERIMENT_TAGS,
    FINISHED_RUNS,
    LOCAL_STORE_DIR,
    MODEL_ARTIFACTS,
    PIPELINE_RUNS,
    metric_column,
    metric_name,
    model_uri_tag,
    tag_filter,
)


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


# MLflow's HTTP client settings (read from the environment on every request), set when the user has
# not: its defaults (7 retries, backoff factor 2, 120 s timeout) take 4 min 8 s to give up on a
# server that refuses connections. These give up after about 3 s on a refused connection, and
# within about 3 x 4 s + 3 s on one that never answers (each try waits up to the timeout to connect,
# and as long again for each part of the answer).
HTTP_REQUEST_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "4",
}
SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def _database_errors() -> tuple[type[BaseException], ...]:
    try:
        from sqlalchemy.exc import DatabaseError
    except ImportError:  # mlflow-skinny without SQLAlchemy: no SQL store to fail
        return ()
    return (DatabaseError,)


@contextlib.contextmanager
def tracking_errors():
    """Turn MLflow's failures (store unreachable, refused request, unreadable database) into a
    TrackingError that names the store and the way to change it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, ConnectionError, OSError, *_database_errors()) as exc:
        uri = mlflow.get_tracking_uri()
        message = getattr(exc, "message", None) or str(exc)
        first = message.splitlines()[0] if message else repr(exc)
        if isinstance(exc, _database_errors()) and sqlite_file(uri) is not None:
            raise TrackingError(
                f"MLflow store {sqlite_file(uri)} cannot be read as a database: {first}. Restore it "
                "from a backup, or move it away to start a new store."
            ) from exc
        raise TrackingError(
            f"MLflow store {uri} failed: {first}. "
            "Check MLFLOW_TRACKING_URI (unset it to use the project's mlruns/mlflow.db)."
        ) from exc


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


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (None for other stores and in-memory ones)."""
    if not uri.startswith("sqlite:///"):
        return None
    name = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(name) if name and name != ":memory:" else None


def _head(db: Path) -> bytes | None:
    """The first 16 bytes of ``db``; None when it is not a regular file (nothing else is opened)."""
    if not stat.S_ISREG(os.stat(db).st_mode):
        return None
    with open(db, "rb") as fh:
        return fh.read(len(SQLITE_MAGIC))


def check_sqlite_store(uri: str, settle_s: float = 3.0) -> None:
    """Refuse an existing SQLite store file that is empty or not SQLite: MLflow would silently
    create a new, empty store over an empty file (the earlier runs gone, their artifacts orphaned),
    and fail with SQLAlchemy's traceback on any other file. A missing file is fine (a new store).

    A file that SQLite is creating right now is empty for a moment: an empty file is re-read
    while holding the store's lock (which imgclust's writers hold while creating it) and for up
    to ``settle_s`` seconds before it is refused."""
    db = sqlite_file(uri)
    if db is None or not db.exists():
        return
    head = _head(db)
    if head == b"":
        with store_lock(uri):
            deadline = time.monotonic() + settle_s
            while (head := _head(db)) == b"" and time.monotonic() < deadline:
                time.sleep(0.2)
    move = f"mv '{db}' '{db}.broken'"
    if head == b"":
        raise TrackingError(
            f"{db}: the MLflow store is empty (0 bytes), so the runs logged in it are gone; imgclust does not "
            f"create a new store over it. Restore it from a backup, or move it away to start a new store ({move}); "
            "the artifacts of the old runs stay in the artifacts folder beside it."
        )
    if head != SQLITE_MAGIC:
        what = "not a regular file" if head is None else f"not an SQLite database (it starts with {head[:8]!r})"
        raise TrackingError(
            f"{db}: the MLflow store is {what}. Restore it from a backup, or move it away to start a new "
            f"store ({move})."
        )


def cache_dir() -> Path:
    """This machine's imgclust cache (``$XDG_CACHE_HOME/imgclust``, else ``~/.cache/imgclust``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imgclust"


def _store_template() -> Path | None:
    """An empty SQLite store made by this MLflow version (its schema at the latest migration), made
    once per machine: MLflow creates a store by running every schema migration since its first,
    1.2 to 2.7 s of CPU (7 to 17 s of wall time on 2 busy cores) in each new project's first
    evaluate, where copying takes 0.01 s. Its Default experiment (id 0) is left out: MLflow adds it, with its artifact location
    and creation time, when it first opens the copy. None where the cache cannot be written."""
    import sqlite3
    import tempfile

    import mlflow

    template = cache_dir() / f"mlflow-{mlflow.__version__}-empty-store.db"
    if template.is_file():
        return template
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=template.parent) as tmp:
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            db = Path(tmp) / "store.db"
            SqlAlchemyStore(f"sqlite:///{db}", Path(tmp).as_uri()).engine.dispose()
            with contextlib.closing(sqlite3.connect(db)) as connection, connection:
                connection.execute("DELETE FROM experiments WHERE experiment_id = 0")
            os.replace(db, template)  # whole or not at all, should two processes make it at once
    except (OSError, sqlite3.Error):
        return None
    return template


def seed_new_store(uri: str) -> None:
    """Create a missing SQLite store as a copy of ``_store_template``; MLflow creates it otherwise."""
    db = sqlite_file(uri)
    if db is None or db.exists():
        return
    template = _store_template()
    if template is None:
        return
    with store_lock(uri):
        if db.exists():
            return
        db.parent.mkdir(parents=True, exist_ok=True)
        partial = db.with_name(f".{db.name}.{os.getpid()}.partial")
        shutil.copyfile(template, partial)
        os.replace(partial, db)  # never an empty store file, which check_sqlite_store refuses


def configure(root: Path | None = None) -> tuple[str, str | None]:
    """Point MLflow at ``MLFLOW_TRACKING_URI`` or the project's local store; return
    (tracking URI, artifact root or None when the server decides).

    Refuses (TrackingError) an existing SQLite store that is empty or not SQLite; for an http(s)
    store, bounds MLflow's retries and timeout (``HTTP_REQUEST_DEFAULTS``) unless the environment
    sets them."""
    import mlflow

    if os.environ.get("MLFLOW_TRACKING_URI"):
        uri, artifacts = os.environ["MLFLOW_TRACKING_URI"], None
    else:
        root = project_root() if root is None else Path(root)
        (root / LOCAL_STORE_DIR).mkdir(parents=True, exist_ok=True)
        uri, artifacts = local_store(root)
    check_sqlite_store(uri)
    seed_new_store(uri)
    if not sys.stderr.isatty():  # MLflow's download bars run together into one line in a log
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if uri.split(":", 1)[0].lower() in ("http", "https"):
        for name, value in HTTP_REQUEST_DEFAULTS.items():
            os.environ.setdefault(name, value)
    mlflow.set_tracking_uri(uri)
    return uri, artifacts


def experiment_name(name: str | None) -> str:
    """``name`` (a --experiment option or params.yaml's mlflow.experiment_name), else the default."""
    return name or DEFAULT_EXPERIMENT


def get_or_create_experiment(name: str, artifact_location: str | None) -> str:
    """Experiment id by name; creating it tolerates a concurrent creator (parallel queued runs).
    The experiment carries ``EXPERIMENT_TAGS`` (its kind, description, primary metric); one made
    before (without them) gets the missing ones, a description set by a user is kept."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location, tags=EXPERIMENT_TAGS)
        except MlflowException:
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    for tag, value in EXPERIMENT_TAGS.items():
        if tag not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, tag, value)
    return experiment.experiment_id


def experiment_id(name: str) -> str:
    """The id of an existing experiment; ParamError naming the store otherwise."""
    import mlflow

    experiment = mlflow.MlflowClient().get_experiment_by_name(name)
    if experiment is None:
        raise ParamError(
            f"no MLflow experiment {name!r} in {mlflow.get_tracking_uri()}; "
            "run the pipeline first (dvc repro) or pass --experiment."
        )
    return experiment.experiment_id


def fetch_run(run_id: str):
    """One run of the store; ParamError telling where to look otherwise."""
    import mlflow

    try:
        return mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ParamError(
            f"no run {run_id!r} in {mlflow.get_tracking_uri()}; see `imgclust compare`, "
            "or set MLFLOW_TRACKING_URI to the store that holds it."
        ) from None


def pipeline_runs(experiment: str, filter_string: str = "", include_unfinished: bool = False):
    """search_runs' DataFrame of the pipeline runs of ``experiment`` (finished ones unless told)."""
    import mlflow

    clauses = [c for c in (filter_string, PIPELINE_RUNS, "" if include_unfinished else FINISHED_RUNS) if c]
    try:
        return mlflow.search_runs([experiment_id(experiment)], filter_string=" and ".join(clauses))
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code != "INVALID_PARAMETER_VALUE":
            raise
        raise ParamError(f"bad --filter {filter_string!r}: {exc.message}") from None


def run_datasets(experiment: str) -> dict[str, str]:
    """data version -> dataset name of the finished pipeline runs of ``experiment``."""
    import mlflow

    runs = mlflow.MlflowClient().search_runs(
        [experiment_id(experiment)], filter_string=f"{FINISHED_RUNS} and {PIPELINE_RUNS}", max_results=50000
    )
    found = {}
    for run in runs:
        tags = run.data.tags
        found[tags.get(DATA_VERSION_TAG, "")] = tags.get(DATASET_TAG, "(runs logged without a dataset)")
    return found


def match_dataset(experiment: str, dataset: str) -> str:
    """The data version that ``dataset`` names: a dataset name, a data version or its first
    characters; ParamError listing the experiment's datasets when none or several match."""
    versions = run_datasets(experiment)
    matches = sorted(
        version
        for version, name in versions.items()
        if version and (dataset in (name, version) or version.startswith(dataset))
    )
    if len(matches) == 1:
        return matches[0]
    known = "; ".join(f"{name} (data version {version[:12]})" for version, name in sorted(versions.items()) if version)
    what = "several data versions" if matches else "no finished run"
    raise ParamError(
        f"{what} of experiment {experiment!r} match dataset {dataset!r}; runs exist for: {known or 'no dataset'}. "
        "Pass --dataset with a data version (or its first characters)."
    )


def best_run_id(experiment: str, metric: str, ascending: bool = False, data_version: str | None = None) -> str:
    """The finished pipeline run with the highest (lowest) value of ``metric`` among the runs of
    ``data_version`` (the tag every pipeline run carries); runs of other data never compete."""
    import mlflow

    metric = metric_name(metric)
    clauses = [FINISHED_RUNS, PIPELINE_RUNS] + ([tag_filter(DATA_VERSION_TAG, data_version)] if data_version else [])
    runs = mlflow.MlflowClient().search_runs(
        [experiment_id(experiment)],
        filter_string=" and ".join(clauses),
        order_by=[f"{metric_column(metric)} {'ASC' if ascending else 'DESC'}"],
        max_results=1,
    )
    if not runs or metric not in runs[0].data.metrics:
        of = f" of data version {data_version}" if data_version else ""
        raise ParamError(f"no finished run{of} in experiment {experiment!r} has metric {metric!r}.")
    return runs[0].info.run_id


def run_dataset(run) -> dict[str, str]:
    """{name, version, source} of the data a run was trained on (empty for runs logged without)."""
    tags = run.data.tags
    found = {"name": tags.get(DATASET_TAG), "version": tags.get(DATA_VERSION_TAG), "source": tags.get(DATA_SOURCE_TAG)}
    return {k: v for k, v in found.items() if v}


def register_model(run_id: str, name: str, alias: str | None, artifact: str):
    """Register ``artifact`` of run ``run_id`` as a new version of ``name`` and point ``alias`` at it."""
    import mlflow

    if artifact not in MODEL_ARTIFACTS:
        raise ParamError(f"unknown model artifact {artifact!r}; use one of {', '.join(MODEL_ARTIFACTS)}.")
    run = fetch_run(run_id)
    source = run.data.tags.get(model_uri_tag(artifact), f"runs:/{run_id}/{artifact}")
    version = mlflow.register_model(source, name)
    client = mlflow.MlflowClient()
    # the model version records its data: the registry shows it, predict prints it
    tags = run.data.tags
    for tag in (DATASET_TAG, DATA_VERSION_TAG, DATA_SOURCE_TAG):
        if tags.get(tag):
            client.set_model_version_tag(name, version.version, tag, tags[tag])
    if tags.get(DATASET_TAG):
        client.update_model_version(
            name,
            version.version,
            description=f"Trained on dataset {tags[DATASET_TAG]} (data version {tags.get(DATA_VERSION_TAG, '?')}, "
            f"source {tags.get(DATA_SOURCE_TAG, '?')}) by run {run_id} ({run.info.run_name}).",
        )
    if alias:
        mlflow.MlflowClient().set_registered_model_alias(name, alias, version.version)
    return version


def model_run_id(model_uri: str) -> str | None:
    """The run that produced the model behind ``runs:/`` or ``models:/`` URIs."""
    import mlflow

    if model_uri.startswith("runs:/"):
        return model_uri.removeprefix("runs:/").split("/", 1)[0]
    if model_uri.startswith("models:/"):
        ref = model_uri.removeprefix("models:/")
        client = mlflow.MlflowClient()
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return client.get_model_version_by_alias(name, alias).run_id
        name, version = ref.rsplit("/", 1)
        return client.get_model_version(name, version).run_id
    return None


def cluster_classes(run_id: str | None) -> dict[int, str]:
    """The run's cluster -> most represented class mapping, if it logged one."""
    import mlflow

    if not run_id:
        return {}
    try:
        mapping = mlflow.artifacts.load_dict(f"runs:/{run_id}/{CLUSTER_CLASSES_ARTIFACT}")
    except Exception:  # noqa: BLE001 - older runs or foreign models carry no mapping
        return {}
    return {int(k): v for k, v in mapping.items()}


def run_dict(run_id: str | None, artifact: str) -> dict:
    """A JSON artifact of a run; empty when the run (an older one, a foreign model) has none."""
    import mlflow

    if not run_id:
        return {}
    try:
        return mlflow.artifacts.load_dict(f"runs:/{run_id}/{artifact}")
    except Exception:  # noqa: BLE001 - older runs or foreign models carry no such artifact
        return {}


def cluster_class_shares(run_id: str | None) -> dict[int, dict[str, float]]:
    """cluster -> {class: share of the cluster's train images}, largest first, if the run logged it."""
    return {int(k): v for k, v in run_dict(run_id, CLUSTER_SHARES_ARTIFACT).items()}


def load_model(model_uri: str):
    """The pyfunc model at ``model_uri``; ParamError naming the URI otherwise."""
    import warnings

    import mlflow

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # MLflow's type-hint advice, not the user's concern
            return mlflow.pyfunc.load_model(model_uri)
    except mlflow.exceptions.MlflowException as exc:
        raise ParamError(f"cannot load model {model_uri!r}: {exc.message}") from None
