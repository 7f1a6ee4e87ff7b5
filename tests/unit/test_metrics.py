"""Tests for imgclust.core.metrics."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import silhouette_score

from imgclust.core.metrics import (
    METRIC_KEYS,
    cluster_class_mapping,
    clustering_metrics,
    contingency,
    hungarian_accuracy,
)

EXPECTED_KEYS = {
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
}


# --------------------------------------------------------------------------- contingency


def test_contingency_values_and_order():
    clusters = np.array([2, 0, 0, 2, 5, 0])
    labels = ["normal", "benign", "malignant", "normal", "benign", "benign"]
    counts, cluster_ids, class_names = contingency(clusters, labels)
    assert cluster_ids == [0, 2, 5]
    assert class_names == ["benign", "malignant", "normal"]
    np.testing.assert_array_equal(
        counts,
        [
            [2, 1, 0],  # cluster 0
            [0, 0, 2],  # cluster 2
            [1, 0, 0],  # cluster 5
        ],
    )
    assert counts.sum() == len(labels)
    assert np.issubdtype(counts.dtype, np.integer)
    assert all(type(k) is int for k in cluster_ids)
    assert all(type(s) is str for s in class_names)


def test_contingency_accepts_lists_and_numpy_string_labels():
    counts, ids, names = contingency([1, 1, 0], np.array(["b", "a", "a"]))
    assert ids == [0, 1]
    assert names == ["a", "b"]
    np.testing.assert_array_equal(counts, [[1, 0], [1, 1]])


def test_contingency_accepts_integral_float_ids():
    counts, ids, _ = contingency(np.array([1.0, 0.0, 1.0]), ["a", "a", "b"])
    assert ids == [0, 1]
    np.testing.assert_array_equal(counts, [[1, 0], [1, 1]])


@pytest.mark.parametrize(
    "clusters, labels",
    [
        ([0, 1], ["a"]),  # length mismatch
        ([], []),  # empty
        ([0.5, 1.0], ["a", "b"]),  # non-integer ids
        (np.zeros((2, 2), dtype=int), ["a", "b"]),  # not 1-D
    ],
)
def test_contingency_rejects_bad_input(clusters, labels):
    with pytest.raises(ValueError):
        contingency(clusters, labels)


# --------------------------------------------------------------------------- hungarian accuracy


def test_hungarian_perfect_with_permuted_ids():
    clusters = np.array([2, 2, 0, 0, 1, 1, 1])
    labels = ["benign", "benign", "malignant", "malignant", "normal", "normal", "normal"]
    assert hungarian_accuracy(clusters, labels) == 1.0


def test_hungarian_hand_computed_case():
    # contingency (rows cluster 0,1,2; cols a,b,c): [[2,0,0],[1,2,0],[0,0,1]] -> 2+2+1 = 5 of 6
    clusters = [0, 0, 1, 1, 1, 2]
    labels = ["a", "a", "b", "b", "a", "c"]
    assert hungarian_accuracy(clusters, labels) == pytest.approx(5 / 6)


def test_hungarian_more_clusters_than_classes():
    # [[2,0],[0,2],[2,0]]: clusters 0 and 2 both hold "a" but only one may be matched -> 4/6.
    # (Majority mapping would give 1.0: the one-to-one constraint matters.)
    clusters = [0, 0, 1, 1, 2, 2]
    labels = ["a", "a", "b", "b", "a", "a"]
    assert hungarian_accuracy(clusters, labels) == pytest.approx(4 / 6)


def test_hungarian_fewer_clusters_than_classes():
    # [[2,1,0],[0,0,3]] -> cluster 0 -> a (2), cluster 1 -> c (3); the "b" sample is an error.
    clusters = [0, 0, 0, 1, 1, 1]
    labels = ["a", "a", "b", "c", "c", "c"]
    assert hungarian_accuracy(clusters, labels) == pytest.approx(5 / 6)


def test_hungarian_single_cluster():
    assert hungarian_accuracy([7, 7, 7, 7], ["a", "b", "b", "c"]) == pytest.approx(2 / 4)


def test_hungarian_returns_python_float():
    assert type(hungarian_accuracy([0, 1], ["a", "b"])) is float


def _brute_force_accuracy(clusters, labels):
    counts, _, _ = contingency(clusters, labels)
    n_k, n_c = counts.shape
    best = 0
    if n_k <= n_c:
        for cols in itertools.permutations(range(n_c), n_k):
            best = max(best, sum(counts[i, j] for i, j in enumerate(cols)))
    else:
        for rows in itertools.permutations(range(n_k), n_c):
            best = max(best, sum(counts[i, j] for j, i in enumerate(rows)))
    return best / counts.sum()


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 4), st.sampled_from(["a", "b", "c", "d"])),
        min_size=1,
        max_size=40,
    )
)
def test_hungarian_matches_brute_force(pairs):
    clusters = [p[0] for p in pairs]
    labels = [p[1] for p in pairs]
    acc = hungarian_accuracy(clusters, labels)
    assert acc == pytest.approx(_brute_force_accuracy(clusters, labels))
    assert 0.0 < acc <= 1.0
    # renaming cluster ids does not change it
    renamed = [10 * c + 3 for c in clusters]
    assert hungarian_accuracy(renamed, labels) == pytest.approx(acc)


# --------------------------------------------------------------------------- mapping


def test_mapping_majority():
    clusters = [0, 0, 0, 1, 1, 2]
    labels = ["benign", "benign", "normal", "malignant", "malignant", "normal"]
    assert cluster_class_mapping(clusters, labels) == {0: "benign", 1: "malignant", 2: "normal"}


def test_mapping_ties_go_to_alphabetical_first():
    clusters = [0, 0, 1, 1, 1, 1, 2, 2]
    labels = ["normal", "benign", "normal", "malignant", "malignant", "normal", "normal", "malignant"]
    mapping = cluster_class_mapping(clusters, labels)
    assert mapping == {0: "benign", 1: "malignant", 2: "malignant"}


def test_mapping_is_not_one_to_one():
    mapping = cluster_class_mapping([0, 0, 1, 1], ["a", "a", "a", "b"])
    assert mapping == {0: "a", 1: "a"}  # tie in cluster 1 -> "a"
    assert all(type(k) is int and type(v) is str for k, v in mapping.items())


# --------------------------------------------------------------------------- clustering_metrics


def _blobs(n_per=30, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.concatenate([c + rng.normal(size=(n_per, 2)) for c in centres])
    labels = ["benign"] * n_per + ["malignant"] * n_per + ["normal"] * n_per
    clusters = np.repeat([2, 0, 1], n_per)  # perfect, ids permuted
    return x, clusters, labels


def test_metrics_keys_types_and_ranges():
    x, clusters, labels = _blobs()
    clusters = clusters.copy()
    clusters[:5] = 0  # some errors
    m = clustering_metrics(clusters, labels, x)
    assert set(m) == EXPECTED_KEYS
    assert tuple(m) == METRIC_KEYS
    for key, value in m.items():
        if key in ("n_samples", "n_clusters_found"):
            assert type(value) is int, key
        else:
            assert type(value) is float, key
    assert m["n_samples"] == 90
    assert m["n_clusters_found"] == 3
    for key in ("nmi", "homogeneity", "completeness", "v_measure", "cluster_accuracy"):
        assert 0.0 <= m[key] <= 1.0, key
    for key in ("ari", "ami", "silhouette"):
        assert -1.0 <= m[key] <= 1.0, key
    assert m["cluster_accuracy"] == pytest.approx(85 / 90)
    assert m["ari"] < 1.0


def test_perfect_clustering_scores_one():
    x, clusters, labels = _blobs()
    m = clustering_metrics(clusters, labels, x)
    for key in ("ari", "nmi", "ami", "homogeneity", "completeness", "v_measure", "cluster_accuracy"):
        assert m[key] == pytest.approx(1.0), key
    assert m["ari"] == 1.0
    assert m["silhouette"] > 0.7


def test_metrics_are_json_serialisable():
    x, clusters, labels = _blobs()
    m = clustering_metrics(clusters, labels, x)
    assert json.loads(json.dumps(m)) == m
    # with a nan silhouette, still serialisable by the json module (as NaN)
    m2 = clustering_metrics(clusters, labels)
    text = json.dumps(m2)
    assert math.isnan(json.loads(text)["silhouette"])


def test_silhouette_matches_sklearn_without_sampling():
    x, clusters, labels = _blobs()
    m = clustering_metrics(clusters, labels, x)
    assert m["silhouette"] == pytest.approx(silhouette_score(x, clusters))


def test_silhouette_nan_without_embedding():
    _, clusters, labels = _blobs()
    assert math.isnan(clustering_metrics(clusters, labels)["silhouette"])
    assert math.isnan(clustering_metrics(clusters, labels, None)["silhouette"])


def test_silhouette_nan_single_cluster():
    x, _, labels = _blobs()
    m = clustering_metrics(np.zeros(len(labels), dtype=int), labels, x)
    assert math.isnan(m["silhouette"])
    assert m["n_clusters_found"] == 1
    assert m["cluster_accuracy"] == pytest.approx(1 / 3)


def test_silhouette_nan_every_sample_its_own_cluster():
    x = np.arange(8, dtype=float).reshape(4, 2)
    m = clustering_metrics([0, 1, 2, 3], ["a", "a", "b", "b"], x)
    assert math.isnan(m["silhouette"])
    assert m["n_clusters_found"] == m["n_samples"] == 4


def test_silhouette_sampling_is_seeded():
    x, clusters, labels = _blobs(n_per=200)
    a = clustering_metrics(clusters, labels, x, silhouette_sample_size=50, random_state=1)
    b = clustering_metrics(clusters, labels, x, silhouette_sample_size=50, random_state=1)
    c = clustering_metrics(clusters, labels, x, silhouette_sample_size=50, random_state=2)
    full = clustering_metrics(clusters, labels, x)
    assert a["silhouette"] == b["silhouette"]
    assert a["silhouette"] != c["silhouette"]
    assert a["silhouette"] == pytest.approx(full["silhouette"], abs=0.1)
    assert a["n_samples"] == 600  # the other metrics use all samples


def test_silhouette_embedding_shape_checked():
    x, clusters, labels = _blobs()
    with pytest.raises(ValueError):
        clustering_metrics(clusters, labels, x[:-1])


def test_metrics_with_more_clusters_than_classes():
    x, clusters, labels = _blobs()
    clusters = clusters.copy()
    clusters[::2] += 10  # split every cluster in two
    m = clustering_metrics(clusters, labels, x)
    assert m["n_clusters_found"] == 6
    assert m["homogeneity"] == pytest.approx(1.0)
    assert m["completeness"] < 1.0
    assert m["cluster_accuracy"] == pytest.approx(0.5, abs=0.02)
