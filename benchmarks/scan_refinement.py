"""Experiment: a SCAN-style refinement head on frozen features, against plain k-means.

    python benchmarks/scan_refinement.py      # after clustering_quality.py --digits-cnn filled the cache

Features: the default CNN post-processing (GeM + flip + sqrt + L2, from clustering_quality.py's
cache of CNN maps) and PCA(50). The head is a linear softmax layer initialised from k-means'
centres and trained full-batch (Adam, 300 steps, TensorFlow on CPU, seconds) on SCAN's loss (Van
Gansbeke et al. 2020): every image's cluster distribution should agree with those of its nearest
neighbours in the embedding, minus ``entropy_weight`` times the entropy of the mean distribution (no
cluster may collapse). Not part of the pipeline: measured, it did not pay on every set (see
docs/clustering.md).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import clustering_quality as cq
import numpy as np


def scan_head(embedding, n_clusters, n_neighbors=5, entropy_weight=5.0, steps=300, seed=0):
    """(refined clusters, k-means clusters) of ``embedding``."""
    import tensorflow as tf
    from sklearn.cluster import KMeans
    from sklearn.neighbors import NearestNeighbors

    tf.random.set_seed(seed)
    neighbours = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(embedding).kneighbors(return_distance=False)
    x = tf.constant(embedding, tf.float32)
    kmeans = KMeans(n_clusters, n_init=10, random_state=seed).fit(embedding)
    weights = tf.Variable(tf.constant(kmeans.cluster_centers_.T * 10, tf.float32))
    bias = tf.Variable(tf.zeros(n_clusters))
    optimiser = tf.keras.optimizers.Adam(1e-2)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            p = tf.nn.softmax(x @ weights + bias)
            agreement = tf.reduce_sum(p[:, None, :] * tf.gather(p, neighbours), -1)
            consistency = -tf.reduce_mean(tf.math.log(agreement + 1e-8))
            mean = tf.reduce_mean(p, 0)
            loss = consistency + entropy_weight * tf.reduce_sum(mean * tf.math.log(mean + 1e-8))
        optimiser.apply_gradients(zip(tape.gradient(loss, [weights, bias]), [weights, bias]))
    return np.argmax((x @ weights + bias).numpy(), 1), kmeans.labels_


def main() -> None:
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score

    os.environ.setdefault("KERAS_HOME", str(cq.SHARED / "keras"))
    cache = Path(tempfile.gettempdir()) / "imgclust-clustering-quality"
    cache.mkdir(parents=True, exist_ok=True)
    print("| dataset | k-means | SCAN head (neighbours, entropy weight): ARI |")
    print("|---|---|---|")
    for dataset in ("busi256", "busi-sample", "digits"):
        folder, size = (cq.export_digits(cache), (8, 8)) if dataset == "digits" else (cq.DATASETS[dataset], (190, 190))
        images, labels = cq.load_images(folder, size)
        maps, flipped = cq.cnn_maps(images, cache, dataset)
        embedding = PCA(50, random_state=0).fit_transform(cq.post_process(maps, flipped, "gem", 0.5, True, True))
        cells, plain = [], None
        for entropy_weight in (2.0, 5.0):
            for n_neighbors in (5, 20):
                refined, plain = scan_head(embedding, len(set(labels)), n_neighbors, entropy_weight)
                cells.append(f"({n_neighbors}, {entropy_weight:g}) {adjusted_rand_score(labels, refined):.3f}")
        print(f"| {dataset} | {adjusted_rand_score(labels, plain):.3f} | {'; '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
