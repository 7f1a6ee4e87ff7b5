"""The pipeline against a real MLflow tracking server: ``mlflow server`` on 127.0.0.1 with a SQLite
backend and proxied (served) artifacts in a temporary folder, ``MLFLOW_TRACKING_URI`` set for
``dvc repro``. The run, its metrics and its models must land on the server, nothing in the project's
local store, and the image model must load back from the server in a fresh process.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap

import pytest
import yaml

from support.packs import unpacked
from support.project import env, make_project, mlflow_runs, sh
from support.servers import http, http_json, mlflow_server

SMALL = {"synthesize__n_images": 36, "resize__width": 48, "resize__height": 48}
EXPERIMENT = "imgclust"

pytestmark = pytest.mark.slow


def api(url: str, endpoint: str, body: dict | None = None, query: str = "") -> dict:
    """One REST call to the tracking server (POST when there is a body)."""
    status, payload = http_json(f"{url}/api/2.0/{endpoint}{'?' + query if query else ''}", body)
    assert status == 200, (endpoint, status, payload[:500])
    return json.loads(payload)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("mlflow-server")
    with mlflow_server(
        f"sqlite:///{home / 'mlflow.db'}",
        workdir=home,
        artifacts=["--serve-artifacts", "--artifacts-destination", str(home / "artifacts")],
    ) as url:
        yield {"url": url, "home": home}


@pytest.fixture(scope="module")
def served(server, tmp_path_factory) -> dict:
    """The pipeline reproduced once with MLFLOW_TRACKING_URI pointing at the server."""
    root = make_project(tmp_path_factory.mktemp("served") / "project", **SMALL)
    sh("dvc", "repro", cwd=root, extra_env={"MLFLOW_TRACKING_URI": server["url"]})
    experiment = api(server["url"], "mlflow/experiments/get-by-name", query=f"experiment_name={EXPERIMENT}")
    experiment_id = experiment["experiment"]["experiment_id"]
    runs = api(server["url"], "mlflow/runs/search", {"experiment_ids": [experiment_id]}).get("runs", [])
    return {"root": root, "experiment_id": experiment_id, "runs": runs}


def test_run_params_metrics_and_tags_are_on_the_server(served, server):
    assert len(served["runs"]) == 1
    run = served["runs"][0]
    root = served["root"]
    assert run["info"]["status"] == "FINISHED"
    # served artifacts: the client only knows the proxy URI, the server decides where files go
    assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:/")
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    expected = json.loads((root / "evaluation" / "metrics.json").read_text())
    for split in ("train", "test"):
        for name in ("ari", "nmi", "cluster_accuracy", "n_samples"):
            assert metrics[f"{split}_{name}"] == pytest.approx(expected[split][name])
    assert params["train.kmeans.n_clusters"] == "3" and params["resize.width"] == "48"
    assert tags["git_commit"] == sh("git", "rev-parse", "HEAD", cwd=root).stdout.strip()
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    raw = next(o["md5"] for o in lock["stages"]["ingest"]["outs"] if o["path"] == "data/raw")
    assert tags["data.ingest.data/raw"] == raw
    info = json.loads((root / "evaluation" / "mlflow_run.json").read_text())
    assert info["run_id"] == run["info"]["run_id"] and info["tracking_uri"] == server["url"]


def test_models_and_artifacts_are_on_the_server(served, server):
    run_id = served["runs"][0]["info"]["run_id"]
    listed = {f["path"] for f in api(server["url"], "mlflow/artifacts/list", query=f"run_id={run_id}")["files"]}
    assert {"metrics.json", "predictions.csv", "plots", "summary.json"} <= listed
    models = api(server["url"], "mlflow/logged-models/search", {"experiment_ids": [served["experiment_id"]]})
    by_name = {m["info"]["name"]: m["info"] for m in models["models"]}
    assert set(by_name) == {"model", "image_model"}
    for info in by_name.values():
        assert info["source_run_id"] == run_id and info["status"] == "LOGGED_MODEL_READY"
        # the files went through the server's proxy into --artifacts-destination
        relative = info["artifact_uri"].removeprefix("mlflow-artifacts:/")
        assert (server["home"] / "artifacts" / relative / "MLmodel").is_file()


def test_nothing_is_written_to_the_local_store(served):
    root = served["root"]
    assert not (root / "mlruns").exists()
    assert mlflow_runs(root) == []
    assert not [p for p in root.rglob("*") if p.name in ("mlruns", "mlflow.db", "mlartifacts")]


def test_image_model_loads_from_the_server_in_a_fresh_process(served, server, tmp_path):
    root = served["root"]
    run_id = served["runs"][0]["info"]["run_id"]
    with open(root / "evaluation" / "predictions.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"][:4]
    assert rows
    exported = unpacked(root / "data" / "augmented")
    request = {
        "uri": f"runs:/{run_id}/image_model",
        "paths": [str(exported / r["file"]) for r in rows],
    }
    script = textwrap.dedent("""
        import json, sys
        import mlflow.pyfunc, pandas as pd
        request = json.loads(sys.argv[1])
        model = mlflow.pyfunc.load_model(request["uri"])
        print(json.dumps([int(c) for c in model.predict(pd.DataFrame({"path": request["paths"]}))]))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(request)],
        cwd=tmp_path,
        env=env(MLFLOW_TRACKING_URI=server["url"]),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [int(r["cluster"]) for r in rows]
    assert not list(tmp_path.rglob("mlruns"))


def test_server_refuses_unknown_host_headers(server):
    # MLflow 3's DNS-rebinding guard: a team server reached by name needs --allowed-hosts
    assert (
        http(
            f"{server['url']}/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": "mlflow.example.com"}
        )[0]
        == 403
    )
    assert http(f"{server['url']}/api/2.0/mlflow/experiments/search?max_results=1")[0] == 200
