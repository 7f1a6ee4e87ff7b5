"""Clusterers without a predict of their own, as scikit-learn estimators that assign new rows to the
nearest cluster centre (imported lazily by ``imgclust.core.clustering``: scikit-learn costs seconds)."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin

from imgclust.errors import ParamError

CENTROID_METHODS = ("ward", "spectral", "hdbscan")


class CentroidClusterer(ClusterMixin, BaseEstimator):
    """Ward, spectral (on a k-nearest-neighbour graph) or HDBSCAN, fitted on the rows given to
    ``fit``; ``predict`` puts each row into the cluster with the nearest centre (the mean of its
    fitted rows), so new rows are assigned the way the image-level model needs.

    ``labels_`` are the fitted rows' nearest-centre clusters (what ``predict`` returns for
    them); ``fit_labels_`` the method's own labels (-1: HDBSCAN noise).
    """

    def __init__(
        self, method="ward", n_clusters=3, n_neighbors=10, min_cluster_size=5, min_samples=None, random_state=0
    ):
        self.method = method
        self.n_clusters = n_clusters
        self.n_neighbors = n_neighbors
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.random_state = random_state

    def _estimator(self, n_rows: int):
        from sklearn.cluster import HDBSCAN, AgglomerativeClustering, SpectralClustering

        if self.method == "ward":
            return AgglomerativeClustering(n_clusters=self.n_clusters, linkage="ward")
        if self.method == "spectral":
            return SpectralClustering(
                n_clusters=self.n_clusters,
                affinity="nearest_neighbors",
                n_neighbors=min(self.n_neighbors, n_rows - 1),
                assign_labels="cluster_qr",  # deterministic, no k-means restarts on the eigenvectors
                random_state=self.random_state,
            )
        if self.method == "hdbscan":
            return HDBSCAN(min_cluster_size=self.min_cluster_size, min_samples=self.min_samples, copy=True)
        raise ParamError(f"unknown clusterer {self.method!r}; use one of {', '.join(CENTROID_METHODS)}.")

    def fit(self, X, y=None):
        X = np.asarray(X, dtype=np.float64)
        if self.method == "hdbscan":
            for key in ("min_cluster_size", "min_samples"):
                value = getattr(self, key)
                if value is not None and value > len(X):
                    raise ParamError(f"train.hdbscan.{key}={value} exceeds the {len(X)} train rows; lower it.")
        raw = self._estimator(len(X)).fit_predict(X)
        found = np.unique(raw[raw >= 0])
        if found.size == 0:
            raise ParamError(
                f"HDBSCAN found no cluster in {len(X)} rows (all noise); lower train.hdbscan.min_cluster_size "
                f"({self.min_cluster_size}) or train.hdbscan.min_samples."
            )
        self.cluster_centers_ = np.stack([X[raw == c].mean(axis=0) for c in found])
        self.fit_labels_ = np.where(raw >= 0, np.searchsorted(found, raw), -1)
        self.n_clusters_ = int(found.size)
        self.labels_ = self.predict(X)
        return self

    def predict(self, X):
        from sklearn.metrics import pairwise_distances_argmin
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "cluster_centers_")
        return pairwise_distances_argmin(np.asarray(X, dtype=np.float64), self.cluster_centers_)
