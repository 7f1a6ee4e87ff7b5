"""Compare cluster assignments with the true class labels.

Pure functions: no I/O and no work at import time. Every returned number is a plain Python
``int``/``float`` so the results can be written to JSON or logged to MLflow as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "METRIC_KEYS",
    "contingency",
    "hungarian_accuracy",
    "cluster_class_mapping",
    "clustering_metrics",
]

#: The keys of :func:`clustering_metrics`'s result, in order.
METRIC_KEYS: tuple[str, ...] = (
    "ari",
    "nmi",
    "ami",
    "homogeneity",
    "completeness",
    "v_measure",
    "cluster_accuracy",
    "silhouette",
    "n_samples",
    "n_clusters_found",
)


def _as_arrays(clusters, labels) -> tuple[np.ndarray, np.ndarray]:
    """Validate and normalise inputs: integer cluster ids and string class names, same length."""
    c = np.asarray(clusters)
    if c.ndim == 2 and c.shape[1] == 1:  # a column vector
        c = c[:, 0]
    if c.ndim != 1:
        raise ValueError(f"clusters must be 1-D, got shape {np.shape(clusters)}")
    if c.size and not np.issubdtype(c.dtype, np.integer):
        try:
            with np.errstate(invalid="ignore"):
                as_int = c.astype(np.int64)
            ok = bool(np.array_equal(as_int, c))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError("cluster ids must be integers")
        c = as_int
    c = c.astype(np.int64, copy=False)
    lab = np.asarray([str(x) for x in labels], dtype=object)
    if lab.shape[0] != c.shape[0]:
        raise ValueError(f"clusters and labels differ in length: {c.shape[0]} cluster ids vs {lab.shape[0]} labels")
    if c.shape[0] == 0:
        raise ValueError("clusters and labels are empty")
    return c, lab


def contingency(clusters: np.ndarray, labels: Sequence[str]) -> tuple[np.ndarray, list[int], list[str]]:
    """Cluster x class count matrix.

    Returns ``(counts, cluster_ids, class_names)`` where ``counts[i, j]`` is the number of samples
    in cluster ``cluster_ids[i]`` whose label is ``class_names[j]``; both lists are sorted.
    ``counts`` is an ``int64`` array of shape ``(len(cluster_ids), len(class_names))``.
    """
    c, lab = _as_arrays(clusters, labels)
    cluster_ids, ci = np.unique(c, return_inverse=True)
    class_names, li = np.unique(lab.astype(str), return_inverse=True)
    counts = np.zeros((cluster_ids.size, class_names.size), dtype=np.int64)
    np.add.at(counts, (ci.reshape(-1), li.reshape(-1)), 1)
    return counts, [int(k) for k in cluster_ids], [str(s) for s in class_names]


def hungarian_accuracy(clusters, labels) -> float:
    """Accuracy after the best one-to-one matching of clusters to classes.

    Uses :func:`scipy.optimize.linear_sum_assignment` on the contingency matrix (maximising the
    matched counts). With more clusters than classes the unmatched clusters count as errors;
    with fewer, the samples of unmatched classes do.
    """
    from scipy.optimize import linear_sum_assignment

    counts, _, _ = contingency(clusters, labels)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / counts.sum())


def cluster_class_mapping(clusters, labels) -> dict[int, str]:
    """For each cluster id, the class most represented in it (ties go to the alphabetically first)."""
    counts, cluster_ids, class_names = contingency(clusters, labels)
    # np.argmax returns the first maximum and class_names is sorted, so ties -> alphabetical first.
    best = counts.argmax(axis=1)
    return {k: class_names[int(j)] for k, j in zip(cluster_ids, best)}


def clustering_metrics(
    clusters,
    labels,
    embedding: np.ndarray | None = None,
    *,
    silhouette_sample_size: int = 5000,
    random_state: int = 0,
) -> dict[str, float]:
    """External (vs labels) and internal (silhouette) clustering quality.

    Keys, exactly: ``ari, nmi, ami, homogeneity, completeness, v_measure, cluster_accuracy,
    silhouette, n_samples, n_clusters_found``. All values are plain Python floats except
    ``n_samples`` and ``n_clusters_found``, which are ints.

    ``silhouette`` is computed on ``embedding`` (the space the clustering was done in, shape
    ``(n_samples, d)``), on a random subsample of ``silhouette_sample_size`` rows (seeded by
    ``random_state``) when there are more samples than that, in float64 with one BLAS thread: the
    same value whatever the input's float type and the machine's thread count. It is ``float("nan")`` when
    ``embedding`` is None, when fewer than 2 distinct clusters exist (in the subsample, if any),
    or when every sample is its own cluster.
    """
    from sklearn import metrics as skm

    c, lab = _as_arrays(clusters, labels)
    lab = lab.astype(str)
    n = int(c.shape[0])
    n_found = int(np.unique(c).size)

    hom, comp, vm = skm.homogeneity_completeness_v_measure(lab, c)
    out: dict[str, float] = {
        "ari": float(skm.adjusted_rand_score(lab, c)),
        "nmi": float(skm.normalized_mutual_info_score(lab, c)),
        "ami": float(skm.adjusted_mutual_info_score(lab, c)),
        "homogeneity": float(hom),
        "completeness": float(comp),
        "v_measure": float(vm),
        "cluster_accuracy": hungarian_accuracy(c, lab),
        "silhouette": _silhouette(c, embedding, silhouette_sample_size, random_state),
        "n_samples": n,
        "n_clusters_found": n_found,
    }
    return out


def silhouette(clusters, embedding: np.ndarray, *, sample_size: int = 5000, random_state: int = 0) -> float:
    """The silhouette of ``clusters`` in ``embedding`` as ``clustering_metrics`` computes it (NaN
    when undefined)."""
    c = np.asarray(clusters).astype(np.int64)
    return _silhouette(c, embedding, sample_size, random_state)


def _silhouette(c: np.ndarray, embedding: np.ndarray | None, sample_size: int, random_state: int) -> float:
    if embedding is None:
        return math.nan
    from sklearn.metrics import silhouette_score
    from threadpoolctl import threadpool_limits

    x = np.asarray(embedding)
    if x.ndim == 1:
        x = x.reshape(-1, 1)
    if x.ndim != 2 or x.shape[0] != c.shape[0]:
        raise ValueError(f"embedding must have shape (n_samples, d) with n_samples={c.shape[0]}, got {x.shape}")
    if sample_size < 1:
        raise ValueError(f"silhouette_sample_size must be >= 1, got {sample_size}")
    n = c.shape[0]
    if n > sample_size:
        rng = np.random.default_rng(random_state)
        idx = np.sort(rng.choice(n, size=sample_size, replace=False))
        x, c = x[idx], c[idx]
    n_labels = np.unique(c).size
    # sklearn requires 2 <= n_labels <= n_samples - 1.
    if n_labels < 2 or n_labels >= c.shape[0]:
        return math.nan
    x = x.astype(np.float64)  # a float32 embedding gives float32 distances
    with threadpool_limits(limits=1, user_api="blas"):  # BLAS sums in another order with more threads
        return float(silhouette_score(x, c))
