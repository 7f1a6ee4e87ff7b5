"""featurize (MobileNet alpha 0.25 CNN features) with the local engine vs the ray engine with 1 and 2
actors on a local Ray, on this machine; prints images/s, the start-up costs and the check that both
engines give the same features and the same ARI (docs/ray.md).

    KERAS_HOME=../shared/keras python benchmarks/ray_featurize.py                # busi256
    KERAS_HOME=../shared/keras python benchmarks/ray_featurize.py --dataset ../shared/datasets/busi-sample

The dataset goes through the real data stages (ingest -> strip masks -> resize 190x190 gray -> split
-> augment, honest protocol) into a temporary folder. Each engine runs twice: on the first
``--small`` images (what it costs to start: process pool or actors, TensorFlow, the model) and on
all of them; the difference gives the marginal rate. Ray's own start (``ray.init``) is timed apart,
and a warm-up local run first takes TensorFlow's first use in this process out of the local figures
(a stage process pays it once, about as long as one actor's start).
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CNN = {"backbone": "mobilenet", "alpha": 0.25, "weights": "imagenet", "input_size": None, "pooling": "avg"}


def prepare(source: Path, root: Path) -> tuple[Path, Path]:
    """The data stages with params.yaml's defaults; returns (augmented images, manifest)."""
    from imgclust.core.fsutil import write_csv
    from imgclust.core.protocols import SPLIT_FIELDS, list_images, split_rows
    from imgclust.stages.augment import augment
    from imgclust.stages.ingest import ingest
    from imgclust.stages.resize import resize_images
    from imgclust.stages.strip_masks import strip_masks

    ingest(source, root / "raw", root / "raw.csv")
    strip_masks(root / "raw", root / "stripped", ["*_mask*.png"])
    resize_images(root / "stripped", root / "resized", 190, 190, "gray", "lanczos")
    write_csv(root / "split.csv", split_rows(list_images(root / "resized"), 0.1, 0), SPLIT_FIELDS)
    augment(
        root / "resized",
        root / "split.csv",
        root / "augmented",
        root / "augmented.csv",
        protocol="honest",
        ops=["rot180", "flip_lr", "flip_tb", "rot90", "rot270"],
        target="max",
        seed=0,
        tutorial_ops=[],
        test_size=0.1,
        split_seed=0,
    )
    return root / "augmented", root / "augmented.csv"


def head_manifest(manifest: Path, n: int, out: Path) -> Path:
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:n])
    return out


def timed_featurize(images: Path, manifest: Path, out: Path, engine: str, actors: int, batch: int) -> float:
    from imgclust.core.ray_engine import RaySettings
    from imgclust.stages.featurize import featurize

    settings = RaySettings(num_actors=actors, num_cpus=1, batch_size=batch)
    start = time.perf_counter()
    featurize(
        images, manifest, out, method="cnn", cnn_params={**CNN, "batch_size": batch}, batch_size=256,
        engine=engine, ray_settings=settings,
    )  # fmt: skip
    return time.perf_counter() - start


def ari(store: Path) -> float:
    """The pipeline's train (params.yaml defaults: PCA 50 -> KMeans 3, fitted on the train rows) and
    its ARI over all rows."""
    from imgclust.core.clustering import fit_model
    from imgclust.core.feature_store import load_features
    from imgclust.core.metrics import clustering_metrics

    features, index, _ = load_features(store)
    is_train = np.array([row["split"] == "train" for row in index])
    model = fit_model(
        features, is_train, method="cnn", pca={"n_components": 50, "whiten": False, "svd_solver": "auto"},
        kmeans={"n_clusters": 3, "n_init": 10, "random_state": 0}, scalable={"threshold": 20000, "batch_size": 256},
        pca_on_all=False,
    )  # fmt: skip
    return clustering_metrics(model.predict(features), [row["class"] for row in index])["ari"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=REPO.parent / "shared" / "datasets" / "busi256")
    parser.add_argument("--small", type=int, default=16, help="images of the start-up run")
    parser.add_argument("--batch", type=int, default=32, help="images per actor call and per CNN batch")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    os.environ.setdefault("KERAS_HOME", str(REPO.parent / "shared" / "keras"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from imgclust.core import ray_engine
    from imgclust.core.feature_store import load_features

    with tempfile.TemporaryDirectory(prefix="imgclust-ray-bench-") as tmp:
        root = Path(tmp)
        images, manifest = prepare(args.dataset, root / "data")
        small = head_manifest(manifest, args.small, root / "small.csv")
        n = sum(1 for _ in open(manifest)) - 1

        start = time.perf_counter()
        ray_engine.connect()  # a local Ray: what every run without RAY_ADDRESS pays once
        ray_start = time.perf_counter() - start

        # the first TensorFlow use in this process (import, graph set-up) is not the local engine's cost
        timed_featurize(images, small, root / "warm-up", "local", 1, args.batch)
        runs = [("local", 1)] + [("ray", a) for a in args.actors]
        results = []
        for engine, actors in runs:
            name = "local" if engine == "local" else f"ray-{actors}"
            t_small = timed_featurize(images, small, root / f"{name}-small", engine, actors, args.batch)
            t_all = timed_featurize(images, manifest, root / name, engine, actors, args.batch)
            # n/a when the start-up run's noise exceeds the difference (a small dataset)
            marginal = f"{(n - args.small) / (t_all - t_small):.1f}" if t_all > t_small else "n/a"
            results.append((name, t_small, t_all, n / t_all, marginal))

        local, local_index, local_meta = load_features(root / "local", mmap=False)
        local_ari = ari(root / "local")
        print(f"dataset {args.dataset.name}: {n} augmented images, {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f}; MobileNet(alpha=0.25) 224x224, batch {args.batch}")  # fmt: skip
        print(
            f"Ray start (ray.init, local, object store {ray_engine.LOCAL_OBJECT_STORE_BYTES >> 20} MiB): {ray_start:.1f} s"
        )
        print(
            f"| engine | start-up run (s, first {args.small} images) | all images (s) | images/s "
            "| marginal images/s | max abs diff vs local | ARI |"
        )
        print("|---|---|---|---|---|---|---|")
        for name, t_small, t_all, rate, marginal in results:
            features, index, meta = load_features(root / name, mmap=False)
            assert index == local_index and meta == local_meta, f"{name}: index or meta differ from local"
            diff = float(np.abs(features.astype(np.float64) - local).max())
            print(f"| {name} | {t_small:.1f} | {t_all:.1f} | {rate:.1f} | {marginal} | {diff:.2g} | "
                  f"{local_ari if name == 'local' else ari(root / name):.6f} |")  # fmt: skip
        print(f"local ARI {local_ari!r}")


if __name__ == "__main__":
    main()
