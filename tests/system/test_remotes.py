"""DVC remotes, for real: repository A reproduces the pipeline and pushes to a remote; a ``git clone``
B configures the same remote, pulls, and gets byte-identical outputs with nothing left to run; a
changed raw image in A reaches B through ``git pull`` + ``dvc pull``.

Two remotes: a local folder, and an S3 API served on 127.0.0.1 by moto (with IAM authentication
switched on, so the credentials really matter) through dvc-s3. The raw dataset is a folder inside
the repository tracked with ``dvc add`` (``data.source: data/source``), so it travels through the
remote too: an absolute external source would be a machine path in params.yaml that B lacks.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

from imgclust.core.packs import Pack
from support.project import make_project, mlflow_runs, sh
from support.servers import free_port, http, server_process, tool

SMALL = {"synthesize__n_images": 36, "resize__width": 48, "resize__height": 48}
OUTPUT_ROOTS = ("data", "models", "reports", "evaluation")
# evaluate's pointer to its MLflow run: neither versioned nor shared through a remote
UNVERSIONED = {"evaluation/mlflow_run.json"}
BUCKET = "imgclust-dvc"
S3_URL = f"s3://{BUCKET}/store"
# credentials and profiles of the machine must not leak into (or rescue) the tests
AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")

pytestmark = pytest.mark.slow


# ------------------------------------------------------------------------------------------ helpers


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under the pipeline's output roots, by path relative to ``root``."""
    hashes = {}
    for name in OUTPUT_ROOTS:
        top = root / name
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in files:
            if path.relative_to(root).as_posix() not in UNVERSIONED:
                hashes[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def head(root: Path) -> str:
    return sh("git", "rev-parse", "HEAD", cwd=root).stdout.strip()


def assert_nothing_to_run(root: Path) -> None:
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=root).stdout
    repro = sh("dvc", "repro", cwd=root)
    assert "Running stage" not in repro.stdout, repro.stdout
    assert "didn't change, skipping" in repro.stdout
    assert mlflow_runs(root) == []  # evaluate did not run either


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def aws_isolated(tmp_path_factory):
    """No AWS credentials, profile or metadata lookup from the machine while this module runs."""
    empty = tmp_path_factory.mktemp("aws") / "empty"
    empty.write_text("")  # botocore refuses os.devnull as a config file ("could not be found")
    with pytest.MonkeyPatch.context() as mp:
        for name in AWS_ENV:
            mp.delenv(name, raising=False)
        mp.setenv("AWS_CONFIG_FILE", str(empty))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        yield


@pytest.fixture(scope="module")
def s3(tmp_path_factory, aws_isolated) -> dict:
    """moto's S3 server on 127.0.0.1 with one bucket and one IAM user whose generated key may use it;
    authentication is enforced once that is set up (a request without valid keys is refused)."""
    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = tool("moto_server")
    args = [moto] if Path(moto).is_absolute() else [sys.executable, "-m", "moto.server"]
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with server_process([*args, "-H", "127.0.0.1", "-p", str(port)], ready_url=f"{endpoint}/moto-api/", log=log):
        bootstrap = {
            "endpoint_url": endpoint,
            "region_name": "us-east-1",
            "aws_access_key_id": "bootstrap",
            "aws_secret_access_key": "bootstrap",
        }
        iam = boto3.client("iam", **bootstrap)
        iam.create_user(UserName="dvc")
        iam.put_user_policy(
            UserName="dvc",
            PolicyName="dvc-store",
            PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
            ),
        )
        key = iam.create_access_key(UserName="dvc")["AccessKey"]
        boto3.client("s3", **bootstrap).create_bucket(Bucket=BUCKET)
        # from now on every request must be signed by a key moto's IAM knows
        status, body = http(
            f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
        )
        assert status == 200, body
        yield {"endpoint": endpoint, "key_id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}


@pytest.fixture(scope="module")
def history(tmp_path_factory, synthetic_dataset, s3) -> dict:
    """Repository A with two versions, each reproduced, pushed to both remotes and committed."""
    base = tmp_path_factory.mktemp("remotes")
    folder_remote = base / "folder-remote"
    a = make_project(base / "A", data__source="data/source", **SMALL)
    shutil.copytree(synthetic_dataset, a / "data" / "source")
    sh("dvc", "add", "data/source", cwd=a)

    # folder remote: an absolute machine path, so in .dvc/config.local only
    sh("dvc", "remote", "add", "--local", "folder", str(folder_remote), cwd=a)
    # S3 remote: the bucket URL is shared (committed); endpoint and keys are per machine/user
    sh("dvc", "remote", "add", "--default", "s3", S3_URL, cwd=a)
    sh("dvc", "remote", "modify", "--local", "s3", "endpointurl", s3["endpoint"], cwd=a)
    sh("dvc", "remote", "modify", "--local", "s3", "access_key_id", s3["key_id"], cwd=a)
    sh("dvc", "remote", "modify", "--local", "s3", "secret_access_key", s3["secret"], cwd=a)

    versions = []
    for version in (1, 2):
        if version == 2:  # change one raw image of the source, then re-version it
            image = sorted(p for p in (a / "data" / "source" / "benign").glob("*.png") if "_mask" not in p.name)[0]
            Image.open(image).transpose(Image.Transpose.ROTATE_90).save(image)
            sh("dvc", "add", "data/source", cwd=a)
        sh("dvc", "repro", cwd=a)
        for remote in ("folder", "s3"):
            assert "pushed" in sh("dvc", "push", "-r", remote, cwd=a).stdout
        sh("git", "add", "-A", cwd=a)
        sh("git", "commit", "-qm", f"data v{version}", cwd=a)
        raw = Pack(a / "data" / "raw")
        items = {path: raw.sha256(path) for path in raw.paths()}
        versions.append(
            {"commit": head(a), "hashes": tree_hashes(a), "raw": items, "resized": len(Pack(a / "data" / "resized"))}
        )
    return {"a": a, "base": base, "folder": folder_remote, "v1": versions[0], "v2": versions[1], "changed": image}


# ---------------------------------------------------------------------------------------------- tests


def test_history_has_two_distinct_versions(history):
    v1, v2 = history["v1"]["hashes"], history["v2"]["hashes"]
    assert set(v1) == set(v2)
    changed = f"data/source/benign/{history['changed'].name}"
    assert v1[changed] != v2[changed]
    raw1, raw2 = history["v1"]["raw"], history["v2"]["raw"]
    assert set(raw1) == set(raw2)
    assert {path for path in raw1 if raw1[path] != raw2[path]} == {f"benign/{history['changed'].name}"}
    # one image changed: the unrelated generated dataset did not
    assert all(v1[k] == v2[k] for k in v1 if k.startswith("data/synthetic/"))
    assert any(k.startswith("models/") for k in v1) and "evaluation/metrics.json" in v1
    assert history["v1"]["resized"] == history["v2"]["resized"] == 36
    # the folder remote holds DVC's content-addressed objects
    assert list((history["folder"] / "files" / "md5").rglob("*"))


@pytest.mark.parametrize("kind", ["folder", "s3"])
def test_clone_pulls_identical_outputs_then_the_new_version(history, s3, kind, monkeypatch):
    b = history["base"] / f"B-{kind}"
    sh("git", "clone", "-q", str(history["a"]), str(b), cwd=history["base"])
    sh("git", "reset", "-q", "--hard", history["v1"]["commit"], cwd=b)  # B took its copy at v1
    assert not (b / "models" / "model.joblib").exists() and not (b / ".dvc" / "config.local").exists()

    if kind == "folder":
        sh("dvc", "remote", "add", "--local", "folder", str(history["folder"]), cwd=b)
    else:
        # the clone brings the bucket URL but no endpoint or key; without keys the store refuses B
        sh("dvc", "remote", "modify", "--local", "s3", "endpointurl", s3["endpoint"], cwd=b)
        denied = sh("dvc", "pull", "-r", "s3", cwd=b, check=False)
        assert denied.returncode != 0
        assert not (b / "models" / "model.joblib").exists()
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3["key_id"])  # B's keys: environment only
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3["secret"])

    sh("dvc", "pull", "-r", kind, cwd=b)
    assert tree_hashes(b) == history["v1"]["hashes"]
    assert_nothing_to_run(b)

    sh("git", "pull", "-q", "--ff-only", cwd=b)
    assert head(b) == history["v2"]["commit"]
    sh("dvc", "pull", "-r", kind, cwd=b)
    got = tree_hashes(b)
    assert got == history["v2"]["hashes"]
    assert got != history["v1"]["hashes"]
    assert_nothing_to_run(b)


def test_committed_config_holds_no_credentials_or_machine_paths(history, s3):
    a = history["a"]
    committed = sh("git", "show", "HEAD:.dvc/config", cwd=a).stdout
    assert S3_URL in committed and "remote = s3" in committed
    local = (a / ".dvc" / "config.local").read_text()
    secrets = [s3["key_id"], s3["secret"], s3["endpoint"], "127.0.0.1", str(history["folder"]), str(history["base"])]
    assert all(s in local for s in secrets[:5])  # they exist, in the right place
    for text in (committed, sh("git", "log", "-p", "--all", cwd=a).stdout):
        leaked = [s for s in secrets if s in text]
        assert not leaked, leaked
    for word in ("access_key_id", "secret_access_key", "endpointurl", "/tmp/"):
        assert word not in committed
    assert ".dvc/config.local" not in sh("git", "ls-files", cwd=a).stdout.split()
    sh("git", "check-ignore", "-q", ".dvc/config.local", cwd=a)
