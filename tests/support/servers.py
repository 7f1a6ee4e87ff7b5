"""The one harness for real servers on 127.0.0.1 (MLflow tracking and model servers, moto S3) in the
system tests: a free port, plain HTTP requests without proxies, and a server process started in its
own process group, waited for (bounded) and always stopped as a group."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

SERVER_START_S = 120


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(
    url: str, *, data: bytes | None = None, method: str | None = None, headers: dict | None = None, timeout: float = 10
) -> tuple[int, bytes]:
    """(status, body) of one request, without any proxy from the environment."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_json(url: str, body: dict | None = None, *, method: str | None = None, timeout: float = 30) -> tuple[int, str]:
    """(status, text) of one JSON request: POST when there is a ``body``, GET otherwise."""
    data = None if body is None else json.dumps(body).encode()
    status, payload = http(
        url,
        data=data,
        method=method,
        headers={"Content-Type": "application/json"} if data is not None else {},
        timeout=timeout,
    )
    return status, payload.decode(errors="replace")


def tool(name: str) -> str:
    """A console script of this interpreter's environment (mlflow, moto_server), else its bare name."""
    exe = Path(sys.executable).with_name(name)
    return str(exe) if exe.exists() else name


def server_env(**extra: str) -> dict:
    """The environment of a server: this interpreter's tools first on PATH, no tracking URI or DVC
    variable inherited from the test run."""
    env = {**os.environ}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        env.pop(name, None)
    return {**env, **extra}


def log_tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


@contextlib.contextmanager
def server_process(
    args: list[str],
    *,
    ready_url: str,
    log: Path,
    env: dict | None = None,
    cwd: Path | None = None,
    timeout: float = SERVER_START_S,
):
    """Start a server in its own process group, wait (bounded) until ``ready_url`` answers 200, and
    always terminate the whole group (servers such as mlflow/uvicorn fork workers) afterwards."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"{args[:3]} exited with {proc.returncode}:\n{log_tail(log)}")
                try:
                    if http(ready_url, timeout=2)[0] == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"{ready_url} not ready after {timeout} s:\n{log_tail(log)}")
                time.sleep(0.3)
            yield proc
        finally:
            stop_group(proc)


@contextlib.contextmanager
def mlflow_server(backend_uri: str, *, workdir: Path, artifacts: list[str], env: dict | None = None):
    """``mlflow server`` on a free port of 127.0.0.1 over ``backend_uri``, with ``artifacts`` (its
    artifact options); yields its URL. Its log is ``workdir``/server.log."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        tool("mlflow"),
        "server",
        "--backend-store-uri",
        backend_uri,
        *artifacts,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # MLflow 3 also starts a job runner with several huey consumers (GenAI jobs); not needed here
    env = server_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **(env or {}))
    with server_process(args, ready_url=f"{url}/health", log=workdir / "server.log", env=env, cwd=workdir):
        yield url


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group we created, SIGKILL what is left after a bounded wait."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        break
    deadline = time.monotonic() + 5  # workers may outlive the leader for a moment
    with contextlib.suppress(ProcessLookupError):
        while time.monotonic() < deadline:
            os.killpg(proc.pid, 0)
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)


POSTGRES_BIN = Path("/usr/local/bin")  # initdb, postgres (Debian's PostgreSQL build)


def postgres_binaries() -> Path | None:
    """The folder holding initdb and postgres: POSTGRES_BIN, else the one of ``postgres`` on PATH."""
    import shutil

    for folder in (POSTGRES_BIN, *(Path(p).parent for p in [shutil.which("postgres")] if p)):
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    return None


@contextlib.contextmanager
def postgres_server(workdir: Path, database: str = "mlflow", timeout: float = 60):
    """A throwaway PostgreSQL cluster on a free port of 127.0.0.1 (trust
    authentication, fsync off), with ``database`` created; yields its SQLAlchemy URI. PostgreSQL
    refuses to run as root: as root, the cluster belongs to and runs as the ``postgres`` user."""
    import pwd

    import psycopg2

    binaries = postgres_binaries()
    if binaries is None:
        raise AssertionError("no initdb/postgres binaries")
    import shutil
    import tempfile

    # its own folder straight under the temporary root: pytest's folders are private to root, and
    # the postgres user must reach the cluster's
    cluster = Path(tempfile.mkdtemp(prefix="imgclust-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        owner = pwd.getpwnam("postgres")
        os.chown(cluster, owner.pw_uid, owner.pw_gid)
    data = cluster / "data"
    initdb = [str(binaries / "initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust", "-E", "UTF8", "--no-sync"]
    init = subprocess.run([*as_user, *initdb], capture_output=True, text=True)
    if init.returncode != 0:
        shutil.rmtree(cluster, ignore_errors=True)
        raise AssertionError(f"initdb failed ({init.returncode}):\n{init.stdout[-2000:]}\n{init.stderr[-2000:]}")
    port = free_port()
    args = [
        *as_user,
        str(binaries / "postgres"),
        "-D",
        str(data),
        "-p",
        str(port),
        "-k",
        str(cluster),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "fsync=off",
        "-c",
        "full_page_writes=off",
    ]
    log = workdir / "postgres.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"postgres exited with {proc.returncode}:\n{log_tail(log)}")
            try:
                connection = psycopg2.connect(host="127.0.0.1", port=port, user="mlflow", dbname="postgres")
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"postgres not ready after {timeout} s:\n{log_tail(log)}") from None
                time.sleep(0.2)
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {database}")
        connection.close()
        # SQLAlchemy 2.1 reads plain postgresql:// as psycopg 3; the driver installed is psycopg2
        yield f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/{database}"
    finally:
        # SIGINT: PostgreSQL's fast shutdown (SIGTERM waits for every client to disconnect)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        stop_group(proc)
        shutil.rmtree(cluster, ignore_errors=True)


@contextlib.contextmanager
def moto_s3(workdir: Path, bucket: str):
    """moto's S3 server on a free port of 127.0.0.1 with ``bucket``; yields the environment a
    client needs (endpoint, test credentials, region)."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = tool("moto_server")
    args = [moto] if Path(moto).is_absolute() else [sys.executable, "-m", "moto.server"]
    with server_process(
        [*args, "-H", "127.0.0.1", "-p", str(port)], ready_url=f"{endpoint}/moto-api/", log=workdir / "moto.log"
    ):
        s3_env = {
            "MLFLOW_S3_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        status, body = http(f"{endpoint}/{bucket}", method="PUT")
        assert status == 200, body[:300]
        yield s3_env
