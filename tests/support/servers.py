"""Real servers on 127.0.0.1 (MLflow tracking and model servers, moto S3) for the system tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

SERVER_START_S = 90


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(url: str, *, data: bytes | None = None, method: str | None = None, headers: dict | None = None,
         timeout: float = 10) -> tuple[int, bytes]:
    """(status, body) of one request, without any proxy from the environment."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@contextlib.contextmanager
def server_process(args: list[str], *, ready_url: str, log: Path, env: dict | None = None, cwd: Path | None = None,
                   timeout: float = SERVER_START_S):
    """Start a server in its own process group, wait (bounded) until ``ready_url`` answers 200, and
    always terminate the whole group (servers such as mlflow/uvicorn fork workers) afterwards."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"{args[0]} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
                try:
                    if http(ready_url, timeout=2)[0] == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"{ready_url} not ready after {timeout} s:\n{log.read_text()[-4000:]}")
                time.sleep(0.3)
            yield proc
        finally:
            stop_group(proc)


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
    with contextlib.suppress(ProcessLookupError):  # workers that outlived the leader
        os.killpg(proc.pid, signal.SIGKILL)
