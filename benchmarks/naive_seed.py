"""The naive seed approach, for comparison: a sequential PIL loop into a float64 matrix of all
pixels, PCA(50) and KMeans(3) in memory, ARI on a 10 % split. No augmentation, so that it does the
same work as the imgclust pipeline run with ``augment.target: 1`` in benchmarks/speed.py (rows 3 and 4).

    python benchmarks/naive_seed.py DATASET_FOLDER
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


def main(root: Path) -> None:
    start = time.perf_counter()
    pixels, labels = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir()):
            if "_mask" in path.name:
                continue
            array = np.asarray(Image.open(path).resize((190, 190)).convert("L"), dtype=np.float64) / 255
            pixels.append(array.ravel())
            labels.append(folder.name)
    X = np.array(pixels)
    del pixels
    loaded = time.perf_counter()
    X = PCA(n_components=50, random_state=0).fit_transform(X)
    X_train, X_test, y_train, y_test = train_test_split(X, labels, test_size=0.1, random_state=0)
    kmeans = KMeans(n_clusters=3, random_state=0, n_init=10).fit(X_train)
    result = {
        "n_images": len(labels),
        "load_s": loaded - start,
        "model_s": time.perf_counter() - loaded,
        "total_s": time.perf_counter() - start,
        "ari_train": adjusted_rand_score(y_train, kmeans.labels_),
        "ari_test": adjusted_rand_score(y_test, kmeans.predict(X_test)),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
