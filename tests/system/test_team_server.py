"""A team's tracking server as docs/sharing.md describes it: `mlflow server` on a throwaway
PostgreSQL cluster, artifacts through the S3 API (moto's server) behind the server's proxy; two
clones of one project log to it at the same time, and `imgclust compare` sees both runs.

One project is reproduced once (local store); a `git clone` of it shares its DVC cache and checks
its data out; then `dvc repro --force --single-item evaluate` runs in both at once with
MLFLOW_TRACKING_URI set to the server.
"""

from __future__ import annotations

import json
import subprocess
import urllib.parse

import pytest

from support.cli import run_cli
from support.project import env, make_project, sh
from support.servers import mlflow_server, moto_s3, postgres_binaries, postgres_server

SMALL = {"synthesize__n_images": 36, "resize__width": 48, "resize__height": 48}
BUCKET = "imgclust-artifacts"

pytestmark = pytest.mark.skipif(
    postgres_binaries() is None, reason="PostgreSQL's initdb and postgres are not installed (/usr/local/bin or PATH)"
)


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    base = tmp_path_factory.mktemp("team")
    first = make_project(base / "first", **SMALL)
    # the pipeline runs while the servers start
    repro = subprocess.Popen(
        ["dvc", "repro", "-q"], cwd=first, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    (base / "pg").mkdir()
    (base / "server").mkdir()
    with (
        postgres_server(base / "pg") as database,
        moto_s3(base / "server", BUCKET) as s3_env,
        mlflow_server(
            database,
            workdir=base / "server",
            artifacts=["--serve-artifacts", "--artifacts-destination", f"s3://{BUCKET}/mlflow"],
            env=s3_env,
        ) as url,
    ):
        output, _ = repro.communicate(timeout=300)
        assert repro.returncode == 0, output[-3000:]
        sh("git", "add", "-A", cwd=first)
        sh("git", "commit", "-qm", "reproduced", cwd=first)
        second = base / "second"
        sh("git", "clone", "-q", str(first), str(second), cwd=base)
        sh("dvc", "cache", "dir", "--local", str(first / ".dvc" / "cache"), cwd=second)
        sh("dvc", "checkout", "-q", cwd=second)
        clones = [
            subprocess.Popen(
                ["dvc", "repro", "--force", "--single-item", "evaluate"],
                cwd=root,
                env=env(MLFLOW_TRACKING_URI=url),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for root in (first, second)
        ]
        outputs = [clone.communicate(timeout=300)[0] for clone in clones]
        for clone, output in zip(clones, outputs):
            assert clone.returncode == 0, output[-3000:]
        runs = [json.loads((root / "evaluation" / "mlflow_run.json").read_text())["run_id"] for root in (first, second)]
        yield {"url": url, "database": database, "s3": s3_env, "runs": runs, "first": first, "outputs": outputs}


def test_both_clones_logged_to_the_server_and_compare_sees_both(team, isolated_mlflow):
    assert len(set(team["runs"])) == 2
    for output in team["outputs"]:
        assert f"at {team['url']}" in output  # each evaluate logged to the server, not a local store
    isolated_mlflow.setenv("MLFLOW_TRACKING_URI", team["url"])
    rows = json.loads(run_cli("compare", "--format", "json", cwd=team["first"]).stdout)
    assert set(team["runs"]) <= {r["run"] for r in rows}
    assert {r["dataset"] for r in rows if r["run"] in team["runs"]} == {"synthetic"}


def test_runs_are_in_postgresql_and_artifacts_in_s3(team):
    import boto3
    import psycopg2

    parts = urllib.parse.urlsplit(team["database"])
    with psycopg2.connect(host=parts.hostname, port=parts.port, user=parts.username, dbname=parts.path[1:]) as db:
        with db.cursor() as cursor:
            cursor.execute("SELECT run_uuid, status FROM runs")
            stored = dict(cursor.fetchall())
    assert all(stored.get(run) == "FINISHED" for run in team["runs"])
    s3 = boto3.client(
        "s3",
        endpoint_url=team["s3"]["MLFLOW_S3_ENDPOINT_URL"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for o in page.get("Contents", [])
    ]
    for run in team["runs"]:
        assert any(f"/{run}/artifacts/metrics.json" in key for key in keys), keys[:20]
