"""The seed tutorial script, faithfully: the classic recipe the project started from, for comparison
with the whole pipeline on the same folder (benchmarks/speed.py, flagship row).

drop masks -> resize 190x190 -> balance classes with rotate/flip -> gray / 255 -> PCA(50) on all
images -> 10 % test split (seed 0) -> KMeans(3, seed 0) -> ARI on train and test.

Balancing adds whole-class copies (rot180, then flip_lr, flip_tb, rot90, rot270) while they still fit
under the largest class: on BUSI (437 / 210 / 133) that is malignant x2 (rot180) and normal x3 (rot180
+ flip_lr), the tutorial's own choice. Unlike benchmarks/naive_seed.py (no balancing, the same images
as the pipeline with ``augment.target: 1``), this is the seed tutorial's full work.

    python benchmarks/seed_script.py DATASET_FOLDER      # prints one JSON line
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import train_test_split

OPS = {
    "rot180": lambda image: image.transpose(Image.Transpose.ROTATE_180),
    "flip_lr": lambda image: image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "flip_tb": lambda image: image.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
    "rot90": lambda image: image.transpose(Image.Transpose.ROTATE_90),
    "rot270": lambda image: image.transpose(Image.Transpose.ROTATE_270),
}


def main(root: Path) -> None:
    start = time.perf_counter()
    classes: dict[str, list[Image.Image]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        classes[folder.name] = [
            Image.open(path).resize((190, 190))
            for path in sorted(folder.iterdir())
            if path.suffix.lower() == ".png" and "_mask" not in path.name
        ]
    largest = max(len(images) for images in classes.values())
    pixels, labels = [], []
    for name, originals in classes.items():
        images = list(originals)
        for op in OPS.values():
            if len(images) + len(originals) > largest:
                break
            images += [op(image) for image in originals]
        pixels += [np.asarray(image.convert("L"), dtype=np.float64).ravel() / 255 for image in images]
        labels += [name] * len(images)
    X = np.array(pixels)
    del pixels
    loaded = time.perf_counter()
    X = PCA(n_components=50, random_state=0).fit_transform(X)
    X_train, X_test, y_train, y_test = train_test_split(X, labels, test_size=0.1, random_state=0)
    kmeans = KMeans(n_clusters=3, random_state=0, n_init=10).fit(X_train)
    result = {
        "n_images": len(labels),
        "n_originals": sum(len(images) for images in classes.values()),
        "load_s": loaded - start,
        "model_s": time.perf_counter() - loaded,
        "total_s": time.perf_counter() - start,
        "ari_train": adjusted_rand_score(y_train, kmeans.labels_),
        "ari_test": adjusted_rand_score(y_test, kmeans.predict(X_test)),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
