"""Hostile conditions met by the real commands (installed console script, dvc, a real pipeline run):
a FIFO named like an image in ingest's source and in predict's input, a disk that fills up under
featurize (a real small tmpfs, where unprivileged mounts are allowed), a killed evaluate's RUNNING
run, an emptied store file, an MLflow server that refuses or never answers, and a model folder from
anywhere."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from imgclust.core.fsutil import read_csv, write_csv
from imgclust.core.packs import Pack
from support.cli import imgclust_bin
from support.packs import pack_folder
from support.project import env, make_project, sh, write_params
from support.servers import free_port

DEADLINE_S = 30


def _run(
    args: list[str], cwd: Path, timeout: float = DEADLINE_S, fifos: tuple[Path, ...] = (), **extra_env: str
) -> tuple[subprocess.CompletedProcess | None, float]:
    """Run a command in a session of its own; (result or None when it ran past ``timeout``, seconds).
    A command past its time is killed as a group (its pool workers too) after unblocking ``fifos``."""
    start = time.monotonic()
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        env=env(**extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for fifo in fifos:
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None, time.monotonic() - start
    return subprocess.CompletedProcess(args, proc.returncode, out, err), time.monotonic() - start


def _image(path: Path, seed: int, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)).save(path)
    return path


def _store_runs(root: Path) -> dict[str, dict]:
    """run id -> {status, tags} of every run in the project's store, read straight from SQLite."""
    db = root / "mlruns" / "mlflow.db"
    if not db.exists() or db.stat().st_size == 0:
        return {}
    error = None
    for attempt in range(50):
        # read-only while a writer may be live; a writer killed mid-transaction leaves a hot journal,
        # which only a read-write connection rolls back (as MLflow's next open of the store does)
        mode = "ro" if attempt < 25 else "rw"
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode={mode}", uri=True, timeout=5)) as con:
                result = {}
                for run_id, status in con.execute("select run_uuid, status from runs").fetchall():
                    tags = dict(con.execute("select key, value from tags where run_uuid=?", (run_id,)).fetchall())
                    result[run_id] = {"status": status, "tags": tags}
                return result
        except sqlite3.OperationalError as exc:  # locked by the writer, or its schema not there yet
            error = exc
            time.sleep(0.1)
    raise AssertionError(f"{db} stayed unreadable: {error}")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict:
    """A real project after ``dvc repro``: one pipeline run (and its model) in its store."""
    root = make_project(
        tmp_path_factory.mktemp("hostile") / "project", synthesize__n_images=36, resize__width=32, resize__height=32
    )
    sh("dvc", "repro", cwd=root)
    run = json.loads((root / "evaluation" / "mlflow_run.json").read_text())
    return {"root": root, "run_id": run["run_id"]}


# ---------------------------------------------------------------------------------- (4) FIFO


def test_ingest_with_a_fifo_in_the_source_finishes_within_30_s_naming_it(tmp_path, synthetic_dataset):
    source = tmp_path / "source"
    shutil.copytree(synthetic_dataset, source)
    fifo = source / "benign" / "a.png"
    os.mkfifo(fifo)
    write_params(tmp_path, data__source=str(source))
    result, elapsed = _run(
        [
            *imgclust_bin(),
            "ingest",
            "--out",
            "data/raw",
            "--manifest",
            "data/manifests/raw.csv",
            "--report",
            "reports/ingest.json",
        ],
        tmp_path,
        fifos=(fifo,),
    )
    assert result is not None, f"imgclust ingest hung on {fifo} (killed after {DEADLINE_S} s)"
    assert result.returncode == 0, result.stderr
    assert "benign/a.png" in result.stderr and "FIFO" in result.stderr
    report = json.loads((tmp_path / "reports" / "ingest.json").read_text())
    assert "FIFO" in report["ignored_reasons"]["benign/a.png"]
    expected = sum(1 for p in synthetic_dataset.rglob("*") if p.is_file())
    assert report["n_files"] == expected  # every real image is still taken
    assert "benign/a.png" not in Pack(tmp_path / "data" / "raw")


def test_predict_with_a_fifo_writes_the_good_images(tmp_path, pipeline):
    folder = tmp_path / "new"
    good = [_image(folder / f"g{i}.png", i) for i in range(3)]
    fifo = folder / "a.png"
    os.mkfifo(fifo)
    named = tmp_path / "b.png"
    os.mkfifo(named)
    out = tmp_path / "out.csv"
    result, _ = _run(
        [
            *imgclust_bin(),
            "predict",
            str(folder),
            str(named),
            "--model",
            f"runs:/{pipeline['run_id']}/image_model",
            "-o",
            str(out),
        ],
        pipeline["root"],
        fifos=(fifo, named),
    )
    assert result is not None, f"imgclust predict hung on a FIFO (killed after {DEADLINE_S} s)"
    assert result.returncode == 0, result.stderr
    rows = {row["path"]: row for row in read_csv(out)}
    assert set(rows) == {str(p) for p in (*good, fifo, named)}
    assert all(rows[str(p)]["cluster"] != "" and not rows[str(p)]["error"] for p in good)
    for path in (fifo, named):
        assert rows[str(path)]["cluster"] == "" and "FIFO" in rows[str(path)]["error"]
        assert str(path) in result.stderr


# ------------------------------------------------------------------------------ (5) disk full


def _group_alive(pgid: int) -> list[int]:
    """The running (not zombie) processes of process group ``pgid``."""
    alive = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                alive.append(int(stat_file.parent.name))
    return alive


def _can_mount_tmpfs(where: Path) -> bool:
    where.mkdir(exist_ok=True)
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=16k tmpfs {shlex.quote(str(where))}"],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0


def test_featurize_on_a_full_tmpfs_names_the_file_and_leaves_no_process(tmp_path):
    """A real 16 KiB tmpfs (in a user and mount namespace of its own: no root needed where the
    kernel allows unprivileged user namespaces) under a feature store of 64 x 1024 bytes."""
    small = tmp_path / "small"
    if not _can_mount_tmpfs(small):
        pytest.skip(
            "no unprivileged tmpfs mount here (unshare -rm); tests/unit/test_hostile_inputs.py "
            "covers the full disk with a write that raises ENOSPC"
        )
    images, rows = tmp_path / "augmented", []
    for i in range(64):
        cls = ("benign", "malignant", "normal")[i % 3]
        _image(images / cls / f"{i}.png", i)
        rows.append(
            {"path": f"{cls}/{i}.png", "class": cls, "split": "train", "source": f"{cls}/{i}.png", "op": "none"}
        )
    pack_folder(images)
    write_csv(tmp_path / "augmented.csv", rows, ("path", "class", "split", "source", "op"))
    write_params(tmp_path, featurize__method="pixels", featurize__batch_size=8)
    script = f"mount -t tmpfs -o size=16k tmpfs {shlex.quote(str(small))} && exec " + shlex.join(
        [
            *imgclust_bin(),
            "featurize",
            "--in",
            str(images),
            "--manifest",
            str(tmp_path / "augmented.csv"),
            "--out",
            str(small / "features"),
        ]
    )
    # output to files, not pipes: workers orphaned by a crash would hold pipes open
    with open(tmp_path / "out.log", "wb") as out, open(tmp_path / "err.log", "wb") as err:
        proc = subprocess.Popen(
            ["unshare", "-rm", "sh", "-c", script],
            cwd=tmp_path,
            env=env(),
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    try:
        returncode = proc.wait(120)
        stderr = (tmp_path / "err.log").read_text(errors="replace")
        assert returncode == 2, f"exit {returncode} (-7 is SIGBUS):\n{stderr[-3000:]}"
        assert "disk is full" in stderr and "features.npy" in stderr, stderr[-3000:]
        deadline = time.monotonic() + 10
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _group_alive(proc.pid), f"processes of the failed featurize outlived it: {_group_alive(proc.pid)}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


# ------------------------------------------------------------------------- (8) MLflow store


def _evaluate_cmd(root: Path) -> list[str]:
    cmd = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["evaluate"]["cmd"]
    return [*imgclust_bin(), *shlex.split(cmd)[1:]]


def test_a_killed_evaluate_run_is_marked_failed_by_the_next_pipeline_run(pipeline):
    root = pipeline["root"]
    before = set(_store_runs(root))
    proc = subprocess.Popen(
        _evaluate_cmd(root),
        cwd=root,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline, killed = time.monotonic() + 180, None
        while time.monotonic() < deadline and proc.poll() is None:
            new = {rid: run for rid, run in _store_runs(root).items() if rid not in before}
            running = [rid for rid, run in new.items() if run["status"] == "RUNNING"]
            if running:
                group = _group_alive(proc.pid)  # evaluate and the helper logging its run (runs.RunLogger)
                os.kill(proc.pid, signal.SIGKILL)  # mid-logging, as the OOM killer would
                killed = running[0]
                break
            time.sleep(0.05)
        proc.wait(30)
        deadline = time.monotonic() + 10
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        survivors = _group_alive(proc.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert killed, "evaluate never showed a RUNNING run"
    assert not survivors, f"the helper outlived the killed evaluate: {survivors}"
    assert _store_runs(root)[killed]["status"] == "RUNNING"

    sh("dvc", "repro", "-f", "evaluate", cwd=root)

    runs = _store_runs(root)
    assert runs[killed]["status"] == "FAILED"
    logger = int(runs[killed]["tags"]["imgclust.pid"])  # the process that logged it: the helper
    assert logger in group and logger != proc.pid, (logger, group, proc.pid)
    assert "ended" in runs[killed]["tags"]["imgclust.failed_reason"]
    newest = json.loads((root / "evaluation" / "mlflow_run.json").read_text())["run_id"]
    assert runs[newest]["status"] == "FINISHED"
    assert sum(run["status"] == "RUNNING" for run in runs.values()) == 0


def test_an_emptied_store_stops_evaluate_and_is_not_recreated(pipeline):
    root = pipeline["root"]
    db = root / "mlruns" / "mlflow.db"
    saved = db.read_bytes()
    artifacts = sorted(p.relative_to(root).as_posix() for p in (root / "mlruns" / "artifacts").rglob("*"))
    try:
        db.write_bytes(b"")  # as a full disk or a bad copy leaves it
        failed = sh("dvc", "repro", "-f", "evaluate", cwd=root, check=False)
        assert failed.returncode != 0
        output = failed.stdout + failed.stderr
        assert str(db) in output and "empty (0 bytes)" in output and "move it away" in output, output[-3000:]
        assert db.stat().st_size == 0, "the store file was re-created"
        after = sorted(p.relative_to(root).as_posix() for p in (root / "mlruns" / "artifacts").rglob("*"))
        assert set(artifacts) <= set(after)
    finally:
        db.write_bytes(saved)


def _refused_port() -> int:
    return free_port()  # bound and released: nothing listens there


@contextlib.contextmanager
def _silent_server():
    """A TCP port that accepts connections (the kernel's backlog) but never answers a request."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


@pytest.mark.parametrize("server", ["refusing", "silent"])
def test_an_unreachable_tracking_server_fails_within_30_s(tmp_path, server):
    write_params(tmp_path)
    with contextlib.ExitStack() as stack:
        port = _refused_port() if server == "refusing" else stack.enter_context(_silent_server())
        result, elapsed = _run(
            [*imgclust_bin(), "compare"], tmp_path, timeout=120, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}"
        )
    assert result is not None and elapsed < DEADLINE_S, f"took {elapsed:.0f} s"
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


# -------------------------------------------------------------------------- (10) --model


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_predict_does_not_load_a_model_folder_without_trust(tmp_path):
    marker = tmp_path / "PWNED"
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "python_model.pkl").write_bytes(pickle.dumps(_Payload(marker), protocol=4))
    (folder / "MLmodel").write_text(
        "flavors:\n  python_function:\n    loader_module: mlflow.pyfunc.model\n"
        "    python_model: python_model.pkl\n    python_version: 3.11.0\n"
    )
    image = _image(tmp_path / "x.png", 0)
    write_params(tmp_path)
    result, _ = _run(
        [*imgclust_bin(), "predict", str(image), "--model", str(folder), "-o", str(tmp_path / "o.csv")], tmp_path
    )
    assert result is not None and result.returncode == 2, result
    assert "--trust" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists(), "the crafted python_model.pkl was unpickled"
    assert not (tmp_path / "o.csv").exists()
