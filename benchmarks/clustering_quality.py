"""How well each feature set x clusterer finds the classes: ARI and NMI over ALL original images.

    python benchmarks/clustering_quality.py                          # busi256, busi-sample, digits
    python benchmarks/clustering_quality.py --datasets digits --digits-cnn
    python benchmarks/clustering_quality.py --auto-k                 # k chosen by train.auto_k instead

Every image of a dataset is an original (no augmented copies); each model is fitted on all of them
and scored on the clusters its ``predict`` gives them (so ward, spectral and HDBSCAN are scored on
their nearest-centre assignment, exactly what the pipeline and the image-level model report).

The numbers come from the project's own code: images are decoded and resized as the resize stage
does (``core.images.load_array``, 190x190 gray for BUSI, 8x8 for digits), CNN features are
``core.cnn.KerasFeatureExtractor``'s (MobileNet alpha=0.25 ImageNet, the weights under
``$KERAS_HOME``, default ``../shared/keras``), post-processed by the functions the extractor itself
applies (``pool_maps``, ``normalise``; checked against the extractor on a few images every run),
and the models are ``core.clustering.fit_model`` with params.yaml's ``train`` sections (PCA(50),
k = the number of classes). The unpooled CNN maps of each dataset (and of its mirror images) are
cached under ``--cache`` (default: the system temp folder), so a rerun costs seconds.

digits is scikit-learn's ``load_digits`` (1,797 8x8 images, 10 classes), exported by this script
as PNG class folders into the cache.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATASETS = {
    "busi256": SHARED / "datasets" / "busi256",
    "busi-sample": SHARED / "datasets" / "busi-sample",
    "digits": None,  # exported from scikit-learn
}
CNN = {"backbone": "mobilenet", "alpha": 0.25, "weights": "imagenet"}
# name -> (pooling, power, l2, flip): the extractor's post-processing parameters
CNN_VARIANTS = {
    "cnn avg (today)": ("avg", 1.0, False, False),
    "cnn avg + L2": ("avg", 1.0, True, False),
    "cnn avg + sqrt + L2": ("avg", 0.5, True, False),
    "cnn max + L2": ("max", 1.0, True, False),
    "cnn GeM + L2": ("gem", 1.0, True, False),
    "cnn GeM + sqrt + L2": ("gem", 0.5, True, False),
    "cnn avg + flip + L2": ("avg", 1.0, True, True),
    "cnn avg + flip + sqrt + L2": ("avg", 0.5, True, True),
    "cnn GeM + flip + L2": ("gem", 1.0, True, True),
    "cnn GeM + flip + sqrt + L2": ("gem", 0.5, True, True),
}
# the default post-processing with the pooled maps of one more layer (featurize.cnn.layers)
MULTI_LAYER = {"cnn GeM + flip + sqrt + L2 + conv_pw_11": ("gem", 0.5, True, True, ["conv_pw_11_relu"])}
CLUSTERERS = ("kmeans", "ward", "spectral", "gmm", "hdbscan")


def export_digits(root: Path) -> Path:
    """scikit-learn's digits as PNG class folders ``root/digits/<class>/<i>.png`` (once)."""
    from sklearn.datasets import load_digits

    from imgclust.core.images import save_new_png

    folder = root / "digits"
    if (folder / ".complete").is_file():
        return folder
    digits = load_digits()
    for i, (image, target) in enumerate(zip(digits.images, digits.target)):
        path = folder / str(target) / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            save_new_png(np.round(image * 255 / 16).astype(np.uint8), path)
    (folder / ".complete").write_text("")
    return folder


def load_images(folder: Path, size: tuple[int, int]) -> tuple[list[np.ndarray], np.ndarray]:
    """Every image of ``folder``'s class subfolders (masks skipped), decoded as the resize stage
    does (gray, lanczos), with its class."""
    from imgclust.core.fsutil import class_folders, is_image_file
    from imgclust.core.images import load_array

    images, labels = [], []
    for cls in class_folders(folder):
        for path in sorted(p for p in cls.iterdir() if is_image_file(p) and "_mask" not in p.name):
            images.append(load_array(path, "gray", size, "lanczos"))
            labels.append(cls.name)
    return images, np.array(labels)


def cnn_maps(images: list[np.ndarray], cache: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The unpooled CNN maps (n, h, w, c) of ``images`` and of their mirror images, cached."""
    from imgclust.core.cnn import KerasFeatureExtractor

    file = cache / f"{name}-mobilenet0.25-maps.npz"
    if file.is_file():
        with np.load(file) as stored:
            return stored["maps"], stored["flipped"]
    extractor = KerasFeatureExtractor(**CNN, pooling=None, batch_size=32).fit()
    shape = extractor.model_.output_shape[1:]
    start = time.perf_counter()
    maps = extractor.transform(images).reshape(-1, *shape)
    flipped = extractor.transform([np.ascontiguousarray(a[:, ::-1]) for a in images]).reshape(-1, *shape)
    print(f"# {name}: CNN maps of {len(images)} images x 2 in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    np.savez(file, maps=maps, flipped=flipped)
    return maps, flipped


def extracted(images: list[np.ndarray], cache: Path, dataset: str, name: str, variant: tuple) -> np.ndarray:
    """KerasFeatureExtractor's own features for ``variant`` (no cached-maps shortcut), cached."""
    from imgclust.core.cnn import KerasFeatureExtractor

    file = cache / f"{dataset}-{name.replace(' ', '_').replace('+', 'p')}.npy"
    if file.is_file():
        return np.load(file)
    pooling, power, l2, flip, layers = variant
    extractor = KerasFeatureExtractor(**CNN, pooling=pooling, power=power, l2=l2, flip=flip, layers=layers).fit()
    features = extractor.transform(images)
    np.save(file, features)
    return features


def post_process(maps, flipped, pooling, power, l2, flip) -> np.ndarray:
    """What KerasFeatureExtractor.transform does after the backbone, from cached maps."""
    from imgclust.core.cnn import normalise, pool_maps

    features = pool_maps(maps, pooling)
    if flip:
        features = (features + pool_maps(flipped, pooling)) / 2
    return normalise(features, power, l2)


def check_against_extractor(images, maps, flipped) -> None:
    """The cached route gives the extractor's own features (a few images, each post-processing)."""
    from imgclust.core.cnn import KerasFeatureExtractor

    sample = images[:4]
    for pooling, power, l2, flip in {v for v in CNN_VARIANTS.values()}:
        extractor = KerasFeatureExtractor(**CNN, pooling=pooling, power=power, l2=l2, flip=flip).fit()
        direct = extractor.transform(sample)
        cached = post_process(maps[:4], flipped[:4], pooling, power, l2, flip)
        np.testing.assert_allclose(direct, cached, rtol=2e-3, atol=2e-4 * float(np.abs(direct).max()))


def score(features, labels, method, clusterer, train, k, auto) -> dict:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from imgclust.core.clustering import fit_model

    pca = dict(train["pca"])
    pca["n_components"] = min(pca["n_components"], features.shape[1], len(features) - 1)
    start = time.perf_counter()
    model = fit_model(
        features,
        np.ones(len(features), bool),
        method=method,
        pca=pca,
        kmeans={**train["kmeans"], "n_clusters": "auto" if auto else k},
        scalable={**train["scalable"], "threshold": 0},
        pca_on_all=False,
        clusterer=clusterer,
        clusterers={name: train[name] for name in ("spectral", "gmm", "hdbscan")},
        auto_k=train["auto_k"],
    )
    clusters = model.predict(features)
    return {
        "ari": adjusted_rand_score(labels, clusters),
        "nmi": normalized_mutual_info_score(labels, clusters),
        "k": len(np.unique(clusters)),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--clusterers", nargs="+", default=list(CLUSTERERS), choices=list(CLUSTERERS))
    parser.add_argument("--features", nargs="+", default=None, help="Feature rows to run (default: all).")
    parser.add_argument("--digits-cnn", action="store_true", help="Also CNN features of digits (8x8 upscaled).")
    parser.add_argument("--whiten", action="store_true", help="Also every row with train.pca.whiten: true.")
    parser.add_argument("--auto-k", action="store_true", help="k by train.auto_k instead of the number of classes.")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "imgclust-clustering-quality")
    args = parser.parse_args()
    os.environ.setdefault("KERAS_HOME", str(SHARED / "keras"))
    from threadpoolctl import threadpool_limits  # noqa: F401  (imported early: BLAS limits below)

    args.cache.mkdir(parents=True, exist_ok=True)
    train = yaml.safe_load((REPO / "params.yaml").read_text())["train"]
    print("| dataset | features | PCA | clusterer | ARI | NMI | k found | s |")
    print("|---|---|---|---|---|---|---|---|")
    for dataset in args.datasets:
        if dataset == "digits":
            folder, size = export_digits(args.cache), (8, 8)
        else:
            folder, size = DATASETS[dataset], (190, 190)
        images, labels = load_images(folder, size)
        k = len(set(labels))
        rows = {"pixels": ("pixels", np.stack(images).reshape(len(images), -1))}
        if dataset != "digits" or args.digits_cnn:
            maps, flipped = cnn_maps(images, args.cache, dataset)
            check_against_extractor(images, maps, flipped)
            for name, variant in CNN_VARIANTS.items():
                rows[name] = ("cnn", post_process(maps, flipped, *variant))
            for name, variant in MULTI_LAYER.items():
                if not args.features or name in args.features:
                    rows[name] = ("cnn", extracted(images, args.cache, dataset, name, variant))
        for name, (method, features) in rows.items():
            if args.features and name not in args.features:
                continue
            for whiten in (False, True) if args.whiten else (False,):
                settings = {**train, "pca": {**train["pca"], "whiten": whiten}}
                for clusterer in args.clusterers:
                    try:
                        result = score(features, labels, method, clusterer, settings, k, args.auto_k)
                    except Exception as exc:  # one failing cell (e.g. HDBSCAN finds nothing) keeps the table
                        print(f"| {dataset} | {name} | | {clusterer} | failed: {exc} | | | |", flush=True)
                        continue
                    pca = f"{settings['pca']['n_components']}{' whiten' if whiten else ''}"
                    print(
                        f"| {dataset} (n={len(labels)}, {k} classes) | {name} | {pca} | {clusterer} | "
                        f"{result['ari']:.3f} | {result['nmi']:.3f} | {result['k']} | {result['seconds']:.1f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
