"""featurize.engine: ray and predict on Ray, against the local engine, on one real local Ray cluster
(``ray start --head``, 2 CPUs) shared by the module; its address reaches the code as RAY_ADDRESS.

Features: MobileNet(alpha=0.25) ImageNet embeddings of busi-sample (or generated images), 64x64 in
and at the CNN's input (small: the engines are compared, not the features' quality)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from support.cli import imgclust_bin
from support.data import run_data_stages
from support.packs import unpacked
from support.paths import BUSI_SAMPLE, KERAS_HOME, REPO
from support.project import env, write_params
from support.servers import free_port, server_process, tool

pytest.importorskip("ray")
if not (KERAS_HOME / "models" / "mobilenet_2_5_224_tf_no_top.h5").is_file():
    pytest.skip("../shared/keras (MobileNet alpha 0.25 weights) not present", allow_module_level=True)

# the shipped featurize.cnn settings (post-processing included), on the small offline backbone
CNN = {
    **yaml.safe_load((REPO / "params.yaml").read_text())["featurize"]["cnn"],
    "backbone": "mobilenet",
    "alpha": 0.25,
    "weights": "imagenet",
    "input_size": 64,
}
ACTOR = "MapWorker(MapBatches(_ExtractFeatures))"
BUCKET = "imgclust-images"


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> dict:
    """moto's S3 server on 127.0.0.1 with one bucket; the AWS variables that reach it (a cluster's
    nodes get theirs where they are started, as the Ray head here does)."""
    import boto3

    port = free_port()
    aws = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    moto = tool("moto_server")
    args = [moto] if Path(moto).is_absolute() else [sys.executable, "-m", "moto.server"]
    with server_process(
        [*args, "-H", "127.0.0.1", "-p", str(port)], ready_url=f"{aws['AWS_ENDPOINT_URL']}/moto-api/", log=log
    ):
        boto3.client(
            "s3", endpoint_url=aws["AWS_ENDPOINT_URL"], region_name="us-east-1",
            aws_access_key_id="test", aws_secret_access_key="test",
        ).create_bucket(Bucket=BUCKET)  # fmt: skip
        yield aws


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory, s3):
    """A real one-node Ray cluster with 2 CPUs, started here and stopped by its process id."""
    port = free_port()
    log = tmp_path_factory.mktemp("ray") / "head.log"
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={port}",
         "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--object-store-memory=300000000",
         "--node-ip-address=127.0.0.1"],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env(RAY_AUTH_MODE="disabled", **s3),
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while "Ray runtime started" not in log.read_text():
        assert head.poll() is None and time.monotonic() < deadline, f"ray start failed:\n{log.read_text()}"
        time.sleep(0.2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_ADDRESS", address)
        patch.setenv("RAY_AUTH_MODE", "disabled")  # a private cluster on 127.0.0.1, of this test alone
        for name, value in s3.items():
            patch.setenv(name, value)
        yield {"address": address, "head": head}
    started = _descendants(head.pid)  # GCS, raylet, agents, workers: stopped by id, whatever happens
    head.send_signal(signal.SIGTERM)  # --block: stops the processes it started
    try:
        head.wait(3)
    except subprocess.TimeoutExpired:
        head.kill()
        head.wait()
    for pid in started:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # `ray start` left its address for a later ray.init() to join: not ours to leave behind
    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    with contextlib.suppress(OSError):
        if address.split(":")[1] in current.read_text():
            current.unlink()


@pytest.fixture(scope="module")
def images(tmp_path_factory, synthetic_dataset):
    """Real data stages (ingest -> augment) on busi-sample when present, else on generated images."""
    source = BUSI_SAMPLE if BUSI_SAMPLE.is_dir() else synthetic_dataset
    return run_data_stages(tmp_path_factory.mktemp("data"), source, size=64)


@pytest.fixture(scope="module")
def local_store(images, tmp_path_factory):
    from imgclust import config
    from imgclust.stages.featurize import cnn_params, featurize

    out = tmp_path_factory.mktemp("local") / "features"
    featurize(
        images["images"], images["manifest"], out, method="cnn",
        cnn_params=cnn_params(config.CnnParams(**CNN)), batch_size=256,
    )  # fmt: skip
    return out


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _actor_pids(head: int) -> list[int]:
    """The feature actors of this module's cluster (descendants of its head process)."""
    pids = []
    for pid in _descendants(head):
        try:
            if ACTOR in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                pids.append(pid)
        except OSError:
            continue
    return pids


def _ari(features: np.ndarray, labels: list[str]) -> float:
    from imgclust.core.clustering import fit_model
    from imgclust.core.metrics import clustering_metrics

    model = fit_model(
        features, np.ones(len(features), bool), method="cnn",
        pca={"n_components": 10, "whiten": False, "svd_solver": "auto"},
        kmeans={"n_clusters": 3, "n_init": 10, "random_state": 0},
        scalable={"threshold": 0, "batch_size": 256}, pca_on_all=False,
    )  # fmt: skip
    return clustering_metrics(model.predict(features), labels)["ari"]


def test_ray_featurize_equals_local_and_survives_a_killed_actor(ray_cluster, images, local_store, tmp_path):
    """`imgclust featurize` with featurize.engine: ray, connected through RAY_ADDRESS: one actor is
    SIGKILLed after the first rows landed (in the stage's per-image cache); Ray restarts it and the
    store equals the local one (features within 1e-5, same index and meta, same ARI). No store exists
    until the run is done."""
    from imgclust.core.feature_store import load_features

    work = tmp_path / "project"
    cnn = {f"featurize__cnn__{k}": v for k, v in CNN.items()}
    write_params(work, featurize__method="cnn", featurize__engine="ray", featurize__ray__batch_size=4, **cnn)
    out = work / "features"
    run = subprocess.Popen(
        [*imgclust_bin(), "featurize", "--in", str(images["images"]), "--manifest", str(images["manifest"]),
         "--out", str(out)],
        cwd=work, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    killed = None
    # until the first rows land: on a loaded 2-core machine the whole run once took 121 s, past a 120 s wait
    deadline = time.monotonic() + 300
    while run.poll() is None and killed is None and time.monotonic() < deadline:
        cache = work / ".imgclust" / "cache" / "featurize"
        if cache.is_dir() and any(p.is_file() for p in cache.rglob("*")):  # some rows: mid-run
            assert not out.exists(), "a feature store appeared before the run finished"
            actors = _actor_pids(ray_cluster["head"].pid)
            if actors:
                os.kill(actors[0], signal.SIGKILL)
                killed = actors[0]
        time.sleep(0.05)
    output, _ = run.communicate(timeout=300)
    assert run.returncode == 0, output
    assert killed is not None, f"the run ended before an actor could be killed:\n{output}"
    assert not list(work.glob(".features.tmp-*")), "the temporary store was left behind"

    local, local_index, local_meta = load_features(local_store, mmap=False)
    remote, remote_index, remote_meta = load_features(out, mmap=False)
    assert remote.shape == local.shape and remote.dtype == local.dtype == np.float32
    assert float(np.abs(remote - local).max()) <= 1e-5
    assert remote_index == local_index and remote_meta == local_meta
    labels = [row["class"] for row in local_index]
    assert _ari(remote.astype(np.float64), labels) == _ari(local.astype(np.float64), labels)


def test_ray_predict_equals_local_from_files_and_s3_and_reports_a_corrupt_image(
    ray_cluster, images, local_store, tmp_path
):
    """The image-level pipeline's predictions with its loader and extractor run by Ray actors
    (reached through RAY_ADDRESS) equal the pipeline's own, for local files (read on this node) and
    for the same images under an s3:// prefix (read by the workers); a corrupt file is an error row."""
    import boto3

    from imgclust.core import ray_engine
    from imgclust.core.clustering import fit_model
    from imgclust.core.cnn import KerasFeatureExtractor
    from imgclust.core.extractors import ImageLoader, image_pipeline
    from imgclust.core.feature_store import load_features

    features, index, _ = load_features(local_store, mmap=False)
    model = fit_model(
        features, np.ones(len(features), bool), method="cnn",
        pca={"n_components": 10, "whiten": False, "svd_solver": "auto"},
        kmeans={"n_clusters": 3, "n_init": 10, "random_state": 0},
        scalable={"threshold": 0, "batch_size": 256}, pca_on_all=False,
    )  # fmt: skip
    extractor = KerasFeatureExtractor(**CNN)
    pipeline = image_pipeline(ImageLoader(64, 64, "gray", "lanczos"), extractor, model)
    exported = unpacked(images["images"])
    paths = [str(exported / row["file"]) for row in index[::3]]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    expected = [int(c) for c in pipeline.predict(paths)]
    bucket = boto3.client("s3")  # the AWS variables of the s3 fixture
    for i, path in enumerate(paths[:6]):
        bucket.upload_file(path, BUCKET, f"new/{i:02d}_{Path(path).name}")
    bucket.put_object(Bucket=BUCKET, Key="new/notes.txt", Body=b"not an image")
    uris = ray_engine.list_s3_images(f"s3://{BUCKET}/new", lambda key: key.endswith(".png"))
    assert len(uris) == 6

    items = [*paths, str(corrupt), *uris]
    rows = list(ray_engine.predict(pipeline, items, ray_engine.RaySettings(num_actors=1, batch_size=8)))

    assert [r[0] for r in rows] == items
    assert [r[1] for r in rows[: len(paths)]] == expected and all(r[2] is None for r in rows[: len(paths)])
    failed = rows[len(paths)]
    assert failed[1] is None and "cannot decode image" in failed[2] and str(corrupt) in failed[2]
    assert [r[1] for r in rows[len(paths) + 1 :]] == expected[:6]
