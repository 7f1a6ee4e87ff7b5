"""Hostile inputs, in-process (no subprocess): a FIFO or socket named like an image (ingest and
predict list it, never open it), a full disk under the feature store (a named error, not SIGBUS),
a broken or empty MLflow store file (refused, never re-created), runs left RUNNING by a dead
process (marked FAILED), an unreachable tracking server (fails in seconds), and a model folder
from anywhere (refused without --trust, its pickle never loaded)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import socket
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclust.core import feature_store
from imgclust.core.feature_store import FEATURES_FILE, FeatureStoreWriter, load_features
from imgclust.core.fsutil import read_csv, write_csv
from imgclust.errors import OutputWriteError, ParamError, TrackingError
from imgclust.stages.ingest import scan_source, survey_source
from imgclust.tools import predict as predict_tool
from imgclust.tracking import runs, store
from support.cli import run_cli
from support.packs import pack_folder, unpacked
from support.project import write_params

DEADLINE_S = 30  # the bar: finish (or fail) within 30 s, naming the file
TRACKING_ENV = ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", *store.HTTP_REQUEST_DEFAULTS)


# ------------------------------------------------------------------------------------------ helpers


def _image(path: Path, value: int = 0, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(path)
    return path


def _source(root: Path) -> Path:
    for cls in ("benign", "malignant", "normal"):
        for i in range(3):
            _image(root / cls / f"{cls}{i}.png", value=hash((cls, i)) % 1000)
    return root


def _socket_file(path: Path) -> socket.socket:
    """A Unix socket bound at ``path`` (bound by a relative name: AF_UNIX paths are short)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    before = Path.cwd()
    os.chdir(path.parent)
    try:
        sock.bind(path.name)
    finally:
        os.chdir(before)
    return sock


def _unblock(fifos: list[Path]) -> None:
    """Open each FIFO for writing and close it: a reader blocked in open() then reads EOF."""
    for fifo in fifos:
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def _within(seconds: float, fifos: list[Path], func, *args, **kwargs):
    """``func(*args)`` in a thread; (finished in time, result or exception). A call still blocked
    after ``seconds`` (on a FIFO) is released so the test fails instead of hanging."""
    box: dict = {}

    def target():
        try:
            box["result"] = func(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["result"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    in_time = not thread.is_alive()
    while thread.is_alive():
        _unblock(fifos)
        thread.join(0.5)
    return in_time, box.get("result")


@pytest.fixture
def tracking_env(monkeypatch):
    """No tracking URI, DVC variable or MLflow HTTP setting from outside; MLflow's global
    tracking URI and every one of those variables restored after the test."""
    from mlflow.tracking._tracking_service import utils

    monkeypatch.setattr(utils, "_tracking_uri", utils._tracking_uri)
    for name in TRACKING_ENV:
        monkeypatch.setenv(name, "placeholder")  # recorded, so teardown restores the original state
        monkeypatch.delenv(name)
    return monkeypatch


# ------------------------------------------------------- (4) FIFO / socket named like an image: ingest


def test_scan_lists_a_fifo_and_a_socket_as_ignored_without_opening_them(tmp_path):
    source = _source(tmp_path / "src")
    os.mkfifo(source / "benign" / "a.png")
    os.mkfifo(source / "stray.png")  # beside the class folders
    sock = _socket_file(source / "normal" / "b.png")
    try:
        in_time, result = _within(
            DEADLINE_S, [source / "benign" / "a.png", source / "stray.png"], survey_source, source
        )
    finally:
        sock.close()
    assert in_time, "scanning the source blocked on a FIFO"
    files, ignored = result
    assert "FIFO" in ignored["benign/a.png"] and "not opened" in ignored["benign/a.png"]
    assert "FIFO" in ignored["stray.png"]
    assert "socket" in ignored["normal/b.png"]
    listed = {p.relative_to(source).as_posix() for paths in files.values() for p in paths}
    assert not listed & {"benign/a.png", "normal/b.png"}
    assert len(listed) == 9
    assert set(scan_source(source)[1]) == set(ignored)  # the old interface lists the same paths


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_ingest_with_a_special_file_named_like_an_image_finishes_and_names_it(tmp_path, kind):
    source = _source(tmp_path / "src")
    special = source / "benign" / "a.png"
    sock = None
    if kind == "fifo":
        os.mkfifo(special)
    else:
        sock = _socket_file(special)
    raw, manifest, report = tmp_path / "data" / "raw", tmp_path / "raw.csv", tmp_path / "reports" / "ingest.json"
    write_params(tmp_path, data__source=str(source), ingest__skip_corrupt=False)
    try:
        start = time.monotonic()
        in_time, proc = _within(
            DEADLINE_S,
            [special],
            run_cli,
            "ingest",
            "--out",
            str(raw),
            "--manifest",
            str(manifest),
            "--report",
            str(report),
            cwd=tmp_path,
            check=False,
        )
        elapsed = time.monotonic() - start
    finally:
        if sock is not None:
            sock.close()
    assert in_time, f"ingest did not finish within {DEADLINE_S} s with a {kind} named benign/a.png"
    assert not isinstance(proc, BaseException), proc
    assert proc.returncode == 0, proc.stderr
    assert elapsed < DEADLINE_S
    assert "benign/a.png" in proc.stderr and "not a regular file" in proc.stderr  # named in the warning
    data = json.loads(report.read_text())
    assert "benign/a.png" in data["ignored"]
    assert ("FIFO" if kind == "fifo" else "socket") in data["ignored_reasons"]["benign/a.png"]
    assert data["files_per_class"] == {"benign": 3, "malignant": 3, "normal": 3}
    assert "benign/a.png" not in {row["path"] for row in read_csv(manifest)}
    files = unpacked(raw)
    assert not (files / "benign" / "a.png").exists()
    assert sorted(p.name for p in (files / "benign").iterdir()) == ["benign0.png", "benign1.png", "benign2.png"]
    assert stat.S_ISFIFO(os.lstat(special).st_mode) if kind == "fifo" else stat.S_ISSOCK(os.lstat(special).st_mode)


# ------------------------------------------------------ (4) FIFO / socket named like an image: predict


class _FakeModel:
    """Stands in for the pyfunc image model: cluster 0 for every path, each path opened as a file."""

    def __init__(self):
        self.seen: list[str] = []

    def predict(self, frame):
        for path in frame["path"]:
            Image.open(path).load()
            self.seen.append(path)
        return np.zeros(len(frame), dtype=np.int64)


@pytest.fixture
def fake_store(monkeypatch):
    model = _FakeModel()
    monkeypatch.setattr(store, "configure", lambda root=None: ("sqlite:///unused.db", None))
    monkeypatch.setattr(store, "load_model", lambda uri: model)
    monkeypatch.setattr(store, "model_run_id", lambda uri: "r1")
    monkeypatch.setattr(store, "cluster_classes", lambda run_id: {0: "benign"})
    # the run's other records: none (no store is opened, so none is created in the working folder)
    monkeypatch.setattr(store, "cluster_class_shares", lambda run_id: {})
    monkeypatch.setattr(store, "run_dict", lambda run_id, artifact: {})

    def no_run(run_id):
        raise ParamError(f"no run {run_id!r}")

    monkeypatch.setattr(store, "fetch_run", no_run)
    return model


def test_predict_reports_a_fifo_in_a_folder_and_predicts_the_good_images(tmp_path, fake_store):
    folder = tmp_path / "new"
    good = [_image(folder / f"g{i}.png", i) for i in range(3)]
    fifo = folder / "a.png"
    os.mkfifo(fifo)
    files = predict_tool.collect_images([folder], [])
    assert fifo in files  # listed (to be reported), not dropped silently
    in_time, rows = _within(DEADLINE_S, [fifo], predict_tool.predict, "runs:/r1/image_model", files)
    assert in_time, "predict blocked on a FIFO"
    by_path = {row["path"]: row for row in rows}
    assert "FIFO" in by_path[str(fifo)]["error"] and str(fifo) in by_path[str(fifo)]["error"]
    assert by_path[str(fifo)]["cluster"] is None
    assert [by_path[str(p)]["cluster"] for p in good] == [0, 0, 0]
    assert fake_store.seen == [str(p) for p in good]


def test_predict_cli_with_a_fifo_named_directly_writes_the_good_rows(tmp_path, fake_store):
    good = [_image(tmp_path / f"g{i}.png", i) for i in range(2)]
    fifo = tmp_path / "b.png"
    os.mkfifo(fifo)
    sock = _socket_file(tmp_path / "c.png")
    out = tmp_path / "out.csv"
    try:
        in_time, proc = _within(
            DEADLINE_S,
            [fifo],
            run_cli,
            "predict",
            str(good[0]),
            str(fifo),
            str(tmp_path / "c.png"),
            str(good[1]),
            "--model",
            "runs:/r1/image_model",
            "-o",
            str(out),
            cwd=tmp_path,
            check=False,
        )
    finally:
        sock.close()
    assert in_time, "imgclust predict blocked on a FIFO named on its command line"
    assert proc.returncode == 0, proc.stderr
    rows = read_csv(out)
    assert [row["path"] for row in rows] == [str(good[0]), str(fifo), str(tmp_path / "c.png"), str(good[1])]
    assert [row["cluster"] for row in rows] == ["0", "", "", "0"]
    assert "FIFO" in rows[1]["error"] and "socket" in rows[2]["error"]
    assert str(fifo) in proc.stderr


# ----------------------------------------------------------------- (5) the feature store on a full disk


def _old_memmap_store(path: Path, batches: list[np.ndarray], dtype) -> None:
    """How the feature file was written before: a writable memory map filled batch by batch."""
    n_rows, n_features = sum(len(b) for b in batches), batches[0].shape[1]
    matrix = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n_rows, n_features))
    written = 0
    for batch in batches:
        matrix[written : written + len(batch)] = batch
        written += len(batch)
    matrix.flush()
    del matrix


@pytest.mark.parametrize(
    ("dtype", "source_dtype"), [(np.uint8, np.uint8), (np.float32, np.float64), (np.float32, np.float32)]
)
def test_feature_file_is_byte_identical_to_the_memmap_way(tmp_path, dtype, source_dtype):
    rng = np.random.default_rng(0)
    scale = 255 if dtype is np.uint8 else 1
    batches = [(rng.random((n, 37)) * scale).astype(source_dtype) for n in (7, 7, 3)]
    (tmp_path / "new").mkdir()
    (tmp_path / "old").mkdir()
    writer = FeatureStoreWriter(tmp_path / "new", 17, 37, dtype)
    for batch in batches:
        writer.append(batch)
    index = [
        {"file": f"c/{i}.png", "class": "c", "split": "train", "source": f"c/{i}.png", "op": "none"} for i in range(17)
    ]
    writer.close(index, {"method": "pixels"})
    _old_memmap_store(tmp_path / "old" / FEATURES_FILE, batches, dtype)

    assert (tmp_path / "new" / FEATURES_FILE).read_bytes() == (tmp_path / "old" / FEATURES_FILE).read_bytes()
    features, rows, meta = load_features(tmp_path / "new")
    assert isinstance(features, np.memmap) and features.dtype == dtype and features.shape == (17, 37)
    np.testing.assert_array_equal(features, np.load(tmp_path / "old" / FEATURES_FILE, mmap_mode="r"))
    assert rows == index and meta == {"method": "pixels"}


class _SmallDisk:
    """A file object on a disk with ``room`` bytes left: writes past it fail with ENOSPC, as a
    full file system's write(2) does (partially written first). ``disk``: a dict shared by the
    file objects of one disk, whose room they use up together (a file opened twice, or two files)."""

    def __init__(self, real, room: int, disk: dict | None = None):
        self.real, self.disk = real, disk if disk is not None else {}
        self.disk.setdefault("room", room)

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.disk["room"]:
            self.real.write(data[: self.disk["room"]])
            self.disk["room"] = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.disk["room"] -= len(data)
        return self.real.write(data)

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.real.close()


def _featurize_inputs(root: Path, n: int = 12) -> tuple[Path, Path]:
    images, rows = root / "augmented", []
    for i in range(n):
        cls = ("benign", "malignant", "normal")[i % 3]
        _image(images / cls / f"{i}.png", i, size=32)
        rows.append(
            {"path": f"{cls}/{i}.png", "class": cls, "split": "train", "source": f"{cls}/{i}.png", "op": "none"}
        )
    write_csv(root / "augmented.csv", rows, ("path", "class", "split", "source", "op"))
    return pack_folder(images), root / "augmented.csv"


def test_full_disk_while_featurizing_is_a_named_error_not_sigbus(tmp_path, monkeypatch):
    """Full disk simulated by file objects whose writes raise ENOSPC past 5000 bytes in all (monkeypatched
    ``open`` of the feature store: no small tmpfs is needed; tests/system/test_hostile_runs.py
    does the same on a real 16 KiB tmpfs where unprivileged mounts are allowed)."""
    images, manifest = _featurize_inputs(tmp_path)
    real_open, disk = open, {}
    monkeypatch.setattr(
        feature_store,
        "open",
        lambda path, mode="r", *a, **k: _SmallDisk(real_open(path, mode, *a, **k), 5000, disk),
        raising=False,
    )
    write_params(tmp_path, featurize__method="pixels", featurize__batch_size=4)
    out = tmp_path / "data" / "features"
    proc = run_cli(
        "featurize", "--in", str(images), "--manifest", str(manifest), "--out", str(out), cwd=tmp_path, check=False
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "disk is full" in proc.stderr and FEATURES_FILE in proc.stderr
    assert not out.exists()
    assert not list(out.parent.glob(".features.tmp-*")), "the partial store is discarded"


def test_feature_writer_turns_enospc_into_output_write_error(tmp_path, monkeypatch):
    real_open = open
    monkeypatch.setattr(
        feature_store,
        "open",
        lambda path, mode="r", *a, **k: _SmallDisk(real_open(path, mode, *a, **k), 300),
        raising=False,
    )
    writer = FeatureStoreWriter(tmp_path, 10, 64, np.uint8)
    with pytest.raises(OutputWriteError, match="disk is full") as info:
        for _ in range(5):
            writer.append(np.ones((2, 64), dtype=np.uint8))
    assert str(tmp_path / FEATURES_FILE) in str(info.value)
    assert writer._file is None  # closed on the failure


# --------------------------------------------------------------------------- (8) MLflow store hygiene


def _project(tmp_path: Path, db: bytes | None) -> Path:
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    write_params(tmp_path)
    if db is not None:
        (tmp_path / "mlruns").mkdir()
        (tmp_path / "mlruns" / "mlflow.db").write_bytes(db)
    return tmp_path


@pytest.mark.parametrize(("content", "words"), [(b"", "empty (0 bytes)"), (b"not a database\n", "not an SQLite")])
@pytest.mark.slow  # creates MLflow stores (seconds each)
def test_empty_or_foreign_store_file_is_refused_and_left_as_is(tracking_env, tmp_path, content, words):
    root = _project(tmp_path, content)
    db = root / "mlruns" / "mlflow.db"
    proc = run_cli("compare", cwd=root, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert str(db) in proc.stderr and words in proc.stderr and "move it away" in proc.stderr
    assert db.read_bytes() == content, "the store file must not be re-created"


@pytest.mark.slow  # creates MLflow stores (seconds each)
def test_configure_refuses_an_empty_store_named_by_mlflow_tracking_uri(tracking_env, tmp_path):
    db = tmp_path / "elsewhere.db"
    db.write_bytes(b"")
    tracking_env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    with pytest.raises(TrackingError, match="empty"):
        store.configure(root=tmp_path)
    assert db.stat().st_size == 0


@pytest.mark.slow  # creates MLflow stores (seconds each)
def test_damaged_sqlite_store_is_a_tracking_error(tracking_env, tmp_path):
    """The SQLite magic, then garbage: SQLAlchemy's DatabaseError becomes a TrackingError."""
    root = _project(tmp_path, store.SQLITE_MAGIC + bytes(range(256)) * 8)
    proc = run_cli("compare", cwd=root, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cannot be read as a database" in proc.stderr and "Traceback" not in proc.stderr


def test_a_missing_store_file_is_still_created(tracking_env, tmp_path):
    import mlflow

    store.configure(root=tmp_path)
    assert store.get_or_create_experiment("fresh", None)
    assert (tmp_path / "mlruns" / "mlflow.db").read_bytes()[:16] == store.SQLITE_MAGIC
    assert mlflow.get_tracking_uri().startswith("sqlite:///")


def test_http_store_gets_bounded_retries_unless_the_user_set_them(tracking_env, tmp_path):
    tracking_env.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    tracking_env.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "42")
    store.configure(root=tmp_path)
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "42"
    for name, value in store.HTTP_REQUEST_DEFAULTS.items():
        if name != "MLFLOW_HTTP_REQUEST_TIMEOUT":
            assert os.environ[name] == value
    from mlflow.environment_variables import (
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
        MLFLOW_HTTP_REQUEST_BACKOFF_JITTER,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES,
        MLFLOW_HTTP_REQUEST_TIMEOUT,
    )

    # the names MLflow reads, parsed as MLflow parses them
    assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 2 and MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get() == 1
    assert MLFLOW_HTTP_REQUEST_BACKOFF_JITTER.get() == 0.5 and MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 42


def test_local_store_leaves_http_settings_alone(tracking_env, tmp_path):
    store.configure(root=tmp_path)
    assert not set(store.HTTP_REQUEST_DEFAULTS) & set(os.environ)


@pytest.mark.slow  # creates MLflow stores (seconds each)
def test_unreachable_tracking_server_fails_within_30_s(tracking_env, tmp_path):
    with socket.socket() as sock:  # a port nobody listens on: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = _project(tmp_path, None)
    tracking_env.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    proc = run_cli("compare", cwd=root, check=False)
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"127.0.0.1:{port}" in proc.stderr
    assert elapsed < DEADLINE_S, f"took {elapsed:.0f} s"


def _dead_pid() -> int:
    """A pid no process has: above the kernel's pid_max."""
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    except OSError:
        return 2**22 + 1


@pytest.mark.slow  # creates MLflow stores (seconds each)
def test_runs_left_running_by_a_dead_process_of_this_host_are_marked_failed(tracking_env, tmp_path):
    import mlflow

    store.configure(root=tmp_path)
    experiment = store.get_or_create_experiment("stale", None)
    client = mlflow.MlflowClient()
    me = runs.process_tags()
    host = socket.gethostname()
    made = {
        "dead": {runs.PID_TAG: str(_dead_pid()), runs.HOST_TAG: host},
        "reused_pid": {**me, runs.PID_START_TAG: "1"},  # our pid, but started at another time
        "alive": me,
        "other_host": {runs.PID_TAG: str(_dead_pid()), runs.HOST_TAG: host + ".elsewhere"},
        "other_container": {
            runs.PID_TAG: str(_dead_pid()),
            runs.HOST_TAG: host,
            runs.PID_NAMESPACE_TAG: "pid:[4026531836000]",
        },
        "untagged": {},
    }
    ids = {name: client.create_run(experiment, tags=tags).info.run_id for name, tags in made.items()}
    finished = client.create_run(experiment, tags=made["dead"]).info.run_id
    client.set_terminated(finished, "FINISHED")

    failed = runs.fail_dead_runs(experiment)

    assert sorted(failed) == sorted([ids["dead"], ids["reused_pid"]])
    status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {
        "dead": "FAILED",
        "reused_pid": "FAILED",
        "alive": "RUNNING",
        "other_host": "RUNNING",
        "other_container": "RUNNING",
        "untagged": "RUNNING",
    }
    assert client.get_run(finished).info.status == "FINISHED"
    assert "ended" in client.get_run(ids["dead"]).data.tags[runs.FAILED_REASON_TAG]


def test_logged_runs_record_their_process_and_clean_stale_ones(tracking_env, tmp_path):
    """log_scan (the light sibling of log_run, which shares the same two steps) tags its run with
    pid, start time and host, and fails the experiment's dead RUNNING runs first."""
    import mlflow

    tracking_env.chdir(tmp_path)
    tracking_env.setattr(runs, "git_tags", lambda cwd: {})  # no git subprocess in a unit test
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    store.configure()
    experiment = store.get_or_create_experiment("scan", store.local_store(tmp_path)[1])
    client = mlflow.MlflowClient()
    stale = client.create_run(
        experiment, tags={runs.PID_TAG: str(_dead_pid()), runs.HOST_TAG: socket.gethostname()}
    ).info.run_id
    run_id = runs.log_scan([{"k": 2, "inertia": 1.0}, {"k": 3, "inertia": 0.5}], {"ks": [2, 3]}, "pixels", [], "scan")
    tags = client.get_run(run_id).data.tags
    assert tags[runs.PID_TAG] == str(os.getpid()) and tags[runs.HOST_TAG] == socket.gethostname()
    assert tags.get(runs.PID_START_TAG) == runs.process_tags().get(runs.PID_START_TAG)
    assert client.get_run(stale).info.status == "FAILED"


class _StartRun(Exception):
    """Raised in place of mlflow.start_run: log_run stops there, before logging any model."""


def test_log_run_fails_dead_runs_then_starts_its_run_with_process_tags(tracking_env, tmp_path):
    import types

    import mlflow

    store.configure(root=tmp_path)
    experiment = store.get_or_create_experiment("pipeline", store.local_store(tmp_path)[1])
    client = mlflow.MlflowClient()
    stale = client.create_run(
        experiment, tags={runs.PID_TAG: str(_dead_pid()), runs.HOST_TAG: socket.gethostname()}
    ).info.run_id
    started = {}

    def start_run(**kwargs):
        started.update(kwargs, stale_status=client.get_run(stale).info.status)
        raise _StartRun

    tracking_env.setattr(mlflow, "start_run", start_run)
    with pytest.raises(_StartRun):
        runs.log_run(
            experiment="pipeline",
            params={},
            metrics={},
            tags={"featurize.method": "pixels"},
            artifacts=[],
            cluster_classes={},
            summary={},
            model=None,
            model_input_example=np.zeros((1, 2)),
            image_pipeline=types.SimpleNamespace(named_steps={"features": object()}),
            root=tmp_path,
        )
    assert started["stale_status"] == "FAILED", "stale runs are failed before the new run starts"
    assert started["experiment_id"] == experiment
    assert started["tags"]["featurize.method"] == "pixels"
    assert started["tags"][runs.PID_TAG] == str(os.getpid())
    assert started["tags"][runs.HOST_TAG] == socket.gethostname()


# ------------------------------------------------------------------- (10) predict --model from anywhere


class _Payload:
    """Unpickling this creates ``marker``: what a crafted python_model.pkl could do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _crafted_model(folder: Path, marker: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "python_model.pkl").write_bytes(pickle.dumps(_Payload(marker), protocol=4))
    (folder / "MLmodel").write_text(
        "flavors:\n  python_function:\n    loader_module: mlflow.pyfunc.model\n"
        "    python_model: python_model.pkl\n    python_version: 3.11.0\n"
    )
    return folder


@pytest.mark.parametrize("form", ["folder", "file_uri", "relative"])
def test_predict_refuses_a_model_folder_without_trust(tracking_env, tmp_path, form):
    marker = tmp_path / "PWNED"
    folder = _crafted_model(tmp_path / "evil", marker)
    image = _image(tmp_path / "x.png")
    model = {"folder": str(folder), "file_uri": folder.as_uri(), "relative": "evil"}[form]
    proc = run_cli("predict", str(image), "--model", model, "-o", str(tmp_path / "out.csv"), cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--trust" in proc.stderr and "refusing to load model" in proc.stderr and "models:/" in proc.stderr
    assert not marker.exists(), "the crafted pickle was loaded"
    assert not (tmp_path / "out.csv").exists()


def test_predict_with_trust_does_load_the_folder(tracking_env, tmp_path):
    """The control: with --trust the same folder is loaded (its payload runs; the model then fails)."""
    marker = tmp_path / "PWNED"
    folder = _crafted_model(tmp_path / "evil", marker)
    with contextlib.suppress(Exception):  # the crafted model is no model: loading it fails after the payload
        proc = run_cli(
            "predict",
            str(_image(tmp_path / "x.png")),
            "--model",
            str(folder),
            "--trust",
            "-o",
            str(tmp_path / "out.csv"),
            cwd=tmp_path,
            check=False,
        )
        assert proc.returncode != 0
    assert marker.exists()


@pytest.mark.parametrize(
    "uri", ["models:/imgclust@champion", "models:/imgclust/3", "runs:/abc123/image_model", "models:/m-0123456789abcdef"]
)
def test_store_uris_need_no_trust(uri):
    predict_tool.check_model_uri(uri)


@pytest.mark.parametrize(
    "uri",
    [
        "models://profile@databricks/imgclust/1",
        "runs:/abc/../../../../tmp/evil",
        "s3://bucket/model",
        "file:///tmp/model",
        "/tmp/model",
        "model",
        "C:/model",
        "mlflow-artifacts:/0/abc/artifacts/image_model",
    ],
)
def test_other_locations_need_trust(uri):
    from imgclust.errors import ParamError

    with pytest.raises(ParamError, match="--trust"):
        predict_tool.check_model_uri(uri)
    predict_tool.check_model_uri(uri, trust=True)
