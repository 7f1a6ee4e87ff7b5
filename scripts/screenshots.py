#!/usr/bin/env python3
"""Screenshots of the MLflow UI of a reproduced project: the runs list and the latest pipeline
run's page, taken with headless Chromium. Not run in CI (needs Chromium: apt-get install chromium).

    python scripts/screenshots.py --project . --out /tmp/shots

Starts `mlflow ui` on the project's store (mlruns/mlflow.db) on a free port of 127.0.0.1, finds the
experiment and its latest pipeline run through the REST API, saves first_visit.png (the experiment
as a first visit opens it), runs.png (the training runs), run.png and run_metrics.png (the latest
run's overview and metrics) and stops the server.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

TRAINING = "workflowType=machine_learning"  # the UI's "Model training" mode
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--hide-scrollbars",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str, body: dict | None = None) -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with opener.open(request, timeout=10) as response:
        return json.loads(response.read())


def wait_until_up(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"mlflow ui exited with {server.returncode}")
        try:
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"{url}/health", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"mlflow ui not up at {url} after {timeout} s")


def shoot(chromium: str, url: str, png: Path, size: str, wait_ms: int) -> None:
    subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--window-size={size}",
            f"--virtual-time-budget={wait_ms}",
            f"--screenshot={png}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    print(f"wrote {png}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path("."))
    parser.add_argument("--out", type=Path, default=Path("/tmp/shots"))
    parser.add_argument("--experiment", default="imgclust")
    parser.add_argument("--size", default="1600,1000", help="window width,height in pixels")
    parser.add_argument("--wait-ms", type=int, default=20000, help="virtual time Chromium gives the page")
    args = parser.parse_args()

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("Chromium not found: apt-get install chromium")
    db = args.project.resolve() / "mlruns" / "mlflow.db"
    if not db.is_file():
        raise SystemExit(f"{db}: no MLflow store; run dvc repro first")
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow = Path(sys.executable).with_name("mlflow")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(args.out / "mlflow_ui.log", "wb")  # noqa: SIM115 - closed with the server below
    server = subprocess.Popen(
        [str(mlflow if mlflow.exists() else "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{db}",
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until_up(url, server)
        experiment = get(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name={args.experiment}")
        experiment_id = experiment["experiment"]["experiment_id"]
        runs = get(
            f"{url}/api/2.0/mlflow/runs/search",
            {
                "experiment_ids": [experiment_id],
                "filter": "tags.`imgclust.kind` = 'pipeline'",
                "order_by": ["attributes.start_time DESC"],
                "max_results": 1,
            },
        ).get("runs", [])
        # MLflow 3.17's UI opens in its GenAI mode unless told (a per-browser setting; the URL's
        # workflowType sets it, as clicking "Model training" once does)
        shoot(chromium, f"{url}/#/experiments/{experiment_id}", args.out / "first_visit.png", args.size, args.wait_ms)
        runs_list = f"{url}/#/experiments/{experiment_id}/runs?{TRAINING}"
        shoot(chromium, runs_list, args.out / "runs.png", args.size, args.wait_ms)
        if runs:
            run_id = runs[0]["info"]["run_id"]
            page = f"{url}/#/experiments/{experiment_id}/runs/{run_id}"
            shoot(chromium, f"{page}?{TRAINING}", args.out / "run.png", args.size.split(",")[0] + ",1800", args.wait_ms)
            shoot(chromium, f"{page}/model-metrics?{TRAINING}", args.out / "run_metrics.png", args.size, args.wait_ms)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


if __name__ == "__main__":
    main()
