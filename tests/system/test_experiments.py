"""Experiments around the pipeline, end to end with real tools: a queued DVC sweep run by two
parallel queue workers logging to the project's SQLite MLflow store, then `imgclust compare`,
`register` and `predict` on that store, the store served by a real `mlflow server` (REST API), and
the registered champion served by a real `mlflow models serve` (/invocations).

One module-scoped project is built, reproduced and swept once; the tests then read it.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from imgclust.core.packs import Pack
from support.cli import imgclust_bin
from support.packs import unpacked
from support.project import env, make_project, mlflow_runs, sh
from support.servers import free_port, http_json, log_tail, mlflow_server, server_env, server_process, tool

SMALL = {"synthesize__n_images": 36, "resize__width": 48, "resize__height": 48}
BASELINE_K = 3  # params.yaml default: the `dvc repro` baseline
SWEEP = "train.kmeans.n_clusters=range(2,7)"  # k = 2..6; k = 3 repeats the baseline
SWEEP_KS = {2, 3, 4, 5, 6}
QUEUE_TIMEOUT_S = 420
CLASSES = {"benign", "malignant", "normal"}


# ---------------------------------------------------------------------------------------- helpers


def store_uri(root: Path) -> str:
    return f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"


def client(root: Path):
    import mlflow

    uri = store_uri(root)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def cli(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """The installed `imgclust` script, run like a user in the project folder."""
    return sh(*imgclust_bin(), *args, cwd=cwd, check=check)


def queue_status(root: Path) -> dict[str, str]:
    """experiment name -> status, from `dvc queue status`."""
    out = sh("dvc", "queue", "status", cwd=root).stdout
    tasks = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0] != "Task" and fields[-1] in {"Queued", "Running", "Success", "Failed"}:
            tasks[fields[1]] = fields[-1]
    return tasks


def wait_for_queue(root: Path, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        tasks = queue_status(root)
        assert tasks, sh("dvc", "queue", "status", cwd=root).stdout  # just queued: never empty
        if not {"Queued", "Running"} & set(tasks.values()):
            return tasks
        if time.monotonic() > deadline:
            sh("dvc", "queue", "stop", "--kill", cwd=root, check=False)
            logs = "\n".join(
                sh("dvc", "queue", "logs", name, cwd=root, check=False).stdout[-2000:]
                for name, state in tasks.items()
                if state != "Success"
            )
            raise AssertionError(f"queue not done after {timeout:.0f} s: {tasks}\n{logs}")
        time.sleep(3)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def pipeline_predictions(root: Path) -> dict[str, int]:
    """file (relative to data/augmented) -> cluster, as the evaluate stage wrote them."""
    return {row["file"]: int(row["cluster"]) for row in read_csv(root / "evaluation" / "predictions.csv")}


def register_baseline(sweep) -> None:
    out = cli("register", "--run", sweep["baseline_run"], cwd=sweep["root"]).stdout
    assert sweep["baseline_run"] in out and "models:/imgclust@champion" in out, out


# ---------------------------------------------------------------------------------------- fixture


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A small project reproduced once and committed, then a 5-point k sweep queued with
    `dvc exp run --queue` and run by `dvc queue start -j 2`."""
    root = make_project(tmp_path_factory.mktemp("experiments") / "project", **SMALL)
    sh("dvc", "repro", cwd=root)
    baseline_runs = mlflow_runs(root)
    assert len(baseline_runs) == 1, baseline_runs
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "baseline reproduced", cwd=root)
    head = sh("git", "rev-parse", "HEAD", cwd=root).stdout.strip()

    queued = sh("dvc", "exp", "run", "--queue", "-S", SWEEP, cwd=root).stdout
    assert queued.count("Queued experiment") == len(SWEEP_KS), queued
    try:
        # not captured: the queue's workers outlive `dvc queue start` and would hold a pipe open
        subprocess.run(
            ["dvc", "queue", "start", "-j", "2"],
            cwd=root,
            env=env(),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        tasks = wait_for_queue(root, QUEUE_TIMEOUT_S)
    finally:
        sh("dvc", "queue", "stop", cwd=root, check=False)
    failed = {name: state for name, state in tasks.items() if state != "Success"}
    if failed:
        logs = "\n".join(sh("dvc", "queue", "logs", name, cwd=root, check=False).stdout[-3000:] for name in failed)
        raise AssertionError(f"queued experiments failed: {failed}\n{logs}")
    baseline = baseline_runs[0]["run_id"]
    return {
        "root": root,
        "head": head,
        "tasks": tasks,
        "baseline_run": baseline,
        "new_runs": [r for r in mlflow_runs(root) if r["run_id"] != baseline],
    }


# ---------------------------------------------------------------------------------------- 1. sweep


def test_queued_sweep_logs_one_finished_run_per_changed_experiment(sweep):
    root, head, new = sweep["root"], sweep["head"], sweep["new_runs"]
    assert len(sweep["tasks"]) == len(SWEEP_KS) and set(sweep["tasks"].values()) == {"Success"}, sweep["tasks"]

    # k = 3 reproduces the committed baseline exactly: DVC skips every stage, so no MLflow run;
    # every other k reruns train + evaluate and logs exactly one run
    changed = SWEEP_KS - {BASELINE_K}
    assert len(new) == len(changed), [(r["run_id"], r["tags"].get("dvc_exp_name")) for r in new]
    assert {int(r["params"]["train.kmeans.n_clusters"]) for r in new} == changed

    mlflow_client = client(root)
    for run in new:
        info = mlflow_client.get_run(run["run_id"])
        assert info.info.status == "FINISHED"
        assert {"test_ari", "train_ari"} <= set(info.data.metrics)
        assert info.data.tags["dvc_baseline_rev"] == head
        assert info.data.tags["git_commit"] == head
        assert info.data.tags["imgclust.kind"] == "pipeline"
        # the run's artifacts went to the project's store, not into DVC's temporary copy
        assert info.info.artifact_uri.startswith((root / "mlruns" / "artifacts").as_uri()), info.info.artifact_uri
        assert int(info.data.metrics["train_n_clusters_found"]) == int(run["params"]["train.kmeans.n_clusters"])
    names = [r["tags"]["dvc_exp_name"] for r in new]
    assert len(set(names)) == len(new)

    # the names are DVC's experiment names, with the k each one ran
    shown = json.loads(sh("dvc", "exp", "show", "--json", cwd=root).stdout)
    baseline_entry = next(e for e in shown if e["rev"] == head)
    exp_k = {
        rev["name"]: rev["data"]["params"]["params.yaml"]["data"]["train"]["kmeans"]["n_clusters"]
        for exp in baseline_entry["experiments"]
        for rev in exp["revs"]
    }
    assert set(exp_k) == set(sweep["tasks"])
    assert {name: exp_k[name] for name in names} == {
        r["tags"]["dvc_exp_name"]: int(r["params"]["train.kmeans.n_clusters"]) for r in new
    }
    no_run = set(exp_k) - set(names)
    assert [exp_k[name] for name in no_run] == [BASELINE_K]

    assert not list((root / ".dvc" / "tmp").rglob("mlflow.db"))
    assert not list((root / ".dvc" / "tmp").rglob("mlruns"))


# ---------------------------------------------------------------------------------------- 2. compare


def test_compare_lists_pipeline_runs_sorted_and_filtered(sweep, tmp_path):
    root = sweep["root"]
    scan = cli("scan-k", "--k-max", "4", cwd=root).stdout
    scan_run = scan.rsplit("k-scan run ", 1)[1].split()[0]
    assert client(root).get_run(scan_run).data.tags["imgclust.kind"] == "k_scan"

    pipeline = {r["run_id"]: r for r in mlflow_runs(root) if r["tags"].get("imgclust.kind") == "pipeline"}
    assert len(pipeline) == 1 + len(sweep["new_runs"])

    table = cli("compare", cwd=root).stdout
    assert all(run_id in table for run_id in pipeline), table
    assert scan_run not in table
    assert "ari_test" in table.splitlines()[0]

    out = tmp_path / "compare.csv"
    cli("compare", "--format", "csv", "-o", str(out), cwd=root)
    rows = read_csv(out)
    assert len(rows) == len(pipeline)
    assert {r["run"] for r in rows} == set(pipeline)
    ari = [float(r["ari_test"]) for r in rows]
    assert ari == sorted(ari, reverse=True)
    for row in rows:
        stored = pipeline[row["run"]]
        assert float(row["ari_test"]) == pytest.approx(stored["metrics"]["test_ari"])
        assert float(row["ari_train"]) == pytest.approx(stored["metrics"]["train_ari"])
        assert row["n_clusters"] == stored["params"]["train.kmeans.n_clusters"]
        assert row["dvc_exp"] == stored["tags"].get("dvc_exp_name", "")

    k4 = [run_id for run_id, r in pipeline.items() if r["params"]["train.kmeans.n_clusters"] == "4"]
    markdown = (
        cli("compare", "--filter", "params.train.kmeans.n_clusters = '4'", "--format", "markdown", cwd=root)
        .stdout.strip()
        .splitlines()
    )
    assert markdown[0].startswith("| run | started_utc | dvc_exp |") and markdown[1].startswith("|---|")
    assert len(markdown) == 2 + len(k4) == 3
    assert k4[0] in markdown[2] and "| 4 |" in markdown[2]

    bad = cli("compare", "--filter", "params.nope ==== 1", cwd=root, check=False)
    assert bad.returncode == 2 and "bad --filter" in bad.stderr


# ---------------------------------------------------------------------------------------- 3. registry + predict


def test_register_best_points_champion_at_highest_test_ari(sweep):
    root = sweep["root"]
    pipeline = [r for r in mlflow_runs(root) if r["tags"].get("imgclust.kind") == "pipeline"]
    best = max(r["metrics"]["test_ari"] for r in pipeline)
    worst = min(r["metrics"]["test_ari"] for r in pipeline)
    by_id = {r["run_id"]: r for r in pipeline}

    out = cli("register", "--best", "ari_test", cwd=root).stdout
    version = client(root).get_model_version_by_alias("imgclust", "champion")
    assert version.run_id in by_id and version.run_id in out
    assert by_id[version.run_id]["metrics"]["test_ari"] == best

    cli("register", "--best", "test_ari", "--lowest", "--alias", "worst", cwd=root)
    version = client(root).get_model_version_by_alias("imgclust", "worst")
    assert by_id[version.run_id]["metrics"]["test_ari"] == worst


def test_predict_with_registered_baseline_matches_the_pipeline(sweep, tmp_path):
    root = sweep["root"]
    register_baseline(sweep)  # the workspace holds the baseline's outputs (queued runs leave it alone)
    version = client(root).get_model_version_by_alias("imgclust", "champion")
    assert version.run_id == sweep["baseline_run"]

    out = tmp_path / "preds.csv"
    refused = cli("predict", "data/augmented", "-o", str(out), cwd=root, check=False)
    assert refused.returncode == 2 and "imgclust export data/augmented" in refused.stderr
    exported = tmp_path / "augmented"
    cli("export", "data/augmented", "-o", str(exported), cwd=root)
    proc = cli("predict", str(exported), "-o", str(out), cwd=root)
    rows = read_csv(out)
    expected = pipeline_predictions(root)
    assert len(rows) == len(expected) and f"{len(rows)} image(s) clustered, 0 unreadable" in proc.stdout
    got = {str(Path(r["path"]).relative_to(exported)): int(r["cluster"]) for r in rows}
    assert got == expected
    assert not any(r["error"] for r in rows)

    # cluster_class: the class most represented in the cluster among TRAIN rows (ties: alphabetical)
    counts: dict[int, Counter] = {}
    for row in read_csv(root / "evaluation" / "predictions.csv"):
        if row["split"] == "train":
            counts.setdefault(int(row["cluster"]), Counter())[row["class"]] += 1
    majority = {k: min(c, key=lambda cls: (-c[cls], cls)) for k, c in counts.items()}
    for row in rows:
        assert row["cluster_class"] in CLASSES
        assert row["cluster_class"] == majority[int(row["cluster"])]


def test_predict_reports_corrupt_files_and_fails_only_when_all_are(sweep, tmp_path):
    root = sweep["root"]
    register_baseline(sweep)
    expected = pipeline_predictions(root)
    folder = tmp_path / "mixed"
    folder.mkdir()
    chosen = sorted(expected)[:3]
    augmented = Pack(root / "data" / "augmented")
    for i, name in enumerate(chosen):
        (folder / f"img{i}.png").write_bytes(augmented.read(name))
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image" * 4)

    out = tmp_path / "mixed.csv"
    proc = cli("predict", str(folder), "-o", str(out), cwd=root)
    assert "3 image(s) clustered, 1 unreadable" in proc.stdout
    assert "bad.png" in proc.stderr
    rows = {Path(r["path"]).name: r for r in read_csv(out)}
    assert set(rows) == {"bad.png", "img0.png", "img1.png", "img2.png"}
    assert rows["bad.png"]["error"] and "bad.png" in rows["bad.png"]["error"]
    assert rows["bad.png"]["cluster"] == "" and rows["bad.png"]["cluster_class"] == ""
    for i, name in enumerate(chosen):
        assert int(rows[f"img{i}.png"]["cluster"]) == expected[name]
        assert rows[f"img{i}.png"]["error"] == ""

    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    shutil.copy2(folder / "bad.png", only_bad / "bad.png")
    (only_bad / "empty.jpg").write_bytes(b"")
    proc = cli("predict", str(only_bad), "-o", str(tmp_path / "bad.json"), cwd=root, check=False)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "0 image(s) clustered, 2 unreadable" in proc.stdout
    rows = json.loads((tmp_path / "bad.json").read_text())
    assert len(rows) == 2 and all(r["error"] and r["cluster"] is None for r in rows)


# ---------------------------------------------------------------------------------------- 4. tracking server


def test_tracking_server_rest_api_lists_the_runs(sweep, tmp_path):
    root = sweep["root"]
    stored = {r["run_id"]: r for r in mlflow_runs(root)}
    experiment = client(root).get_experiment_by_name("imgclust")
    with mlflow_server(
        store_uri(root),
        workdir=tmp_path,
        artifacts=["--default-artifact-root", (root / "mlruns" / "artifacts").as_uri()],
    ) as url:
        status, body = http_json(
            url + "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment.experiment_id], "max_results": 1000}
        )
        assert status == 200, body
        runs = json.loads(body)["runs"]
        assert {r["info"]["run_id"] for r in runs} == set(stored)
        pipeline_seen = 0
        for run in runs:
            metrics = {m["key"]: m["value"] for m in run["data"].get("metrics", [])}
            tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
            if tags.get("imgclust.kind") != "pipeline":
                continue
            pipeline_seen += 1
            assert metrics["test_ari"] == pytest.approx(stored[run["info"]["run_id"]]["metrics"]["test_ari"])
            assert metrics["train_ari"] == pytest.approx(stored[run["info"]["run_id"]]["metrics"]["train_ari"])
            assert run["info"]["status"] == "FINISHED"
        assert pipeline_seen == 1 + len(sweep["new_runs"])

        status, body = http_json(
            url + "/api/2.0/mlflow/runs/search",
            {"experiment_ids": [experiment.experiment_id], "filter": "params.`train.kmeans.n_clusters` = '4'"},
        )
        assert status == 200, body
        filtered = json.loads(body)["runs"]
        assert [r["info"]["run_id"] for r in filtered] == [
            run_id for run_id, r in stored.items() if r["params"].get("train.kmeans.n_clusters") == "4"
        ]


# ---------------------------------------------------------------------------------------- 5. model serving


def test_models_serve_champion_matches_the_pipeline(sweep, tmp_path):
    root = sweep["root"]
    register_baseline(sweep)
    expected = pipeline_predictions(root)
    files = sorted(expected)[::7]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        tool("mlflow"),
        "models",
        "serve",
        "-m",
        "models:/imgclust@champion",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    env = server_env(MLFLOW_TRACKING_URI=store_uri(root))
    log = tmp_path / "serve.log"
    exported = unpacked(root / "data" / "augmented")
    with server_process(args, ready_url=f"{url}/ping", log=log, cwd=tmp_path, env=env):
        paths = [[str(exported / name)] for name in files]
        status, body = http_json(
            url + "/invocations", {"dataframe_split": {"columns": ["path"], "data": paths}}, timeout=60
        )
        assert status == 200, f"{body}\n{log_tail(log)}"
        assert json.loads(body)["predictions"] == [expected[name] for name in files]

        status, body = http_json(
            url + "/invocations", {"dataframe_split": {"columns": ["path"], "data": [[str(tmp_path / "missing.png")]]}}
        )
        assert status >= 400, body
