"""Tests for imgclust.core.plots: every function writes a real, non-trivial PNG.

(That importing it does not import pyplot is checked in a fresh interpreter by
tests/system/test_model_stages_dvc.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclust.core import plots


def _check_png(path: Path, min_w: int = 200, min_h: int = 150) -> Image.Image:
    assert path.is_file()
    assert path.stat().st_size > 1000
    with path.open("rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    img = Image.open(path)
    img.load()
    assert img.format == "PNG"
    w, h = img.size
    assert w >= min_w and h >= min_h, img.size
    arr = np.asarray(img.convert("RGB"))
    # not a single flat colour, and more than a couple of colours
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 10
    return img


def _data(n_per=40, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    xy = np.concatenate([c + rng.normal(size=(n_per, 2)) for c in centres])
    labels = ["benign"] * n_per + ["malignant"] * n_per + ["normal"] * n_per
    clusters = np.repeat([2, 0, 1], n_per)
    clusters[::7] = 3  # an extra, mixed cluster
    return xy, clusters, labels


def _thumbs(rng, n, gray=True, size=(24, 32)):
    h, w = size
    out = []
    for _ in range(n):
        if gray:
            out.append(rng.integers(0, 256, size=(h, w), dtype=np.uint8))
        else:
            out.append(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
    return out


def test_plot_contingency(tmp_path):
    _, clusters, labels = _data()
    out = tmp_path / "nested" / "dir" / "contingency.png"
    plots.plot_contingency(clusters, labels, out, title="Test contingency")
    _check_png(out)


def test_plot_contingency_is_deterministic(tmp_path):
    _, clusters, labels = _data()
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    plots.plot_contingency(clusters, labels, a)
    plots.plot_contingency(clusters, labels, b)
    assert a.read_bytes() == b.read_bytes()


def test_plot_scatter(tmp_path):
    xy, clusters, labels = _data()
    out = tmp_path / "scatter.png"
    plots.plot_scatter(xy, clusters, labels, out, title="Test scatter")
    img = _check_png(out, min_w=500)
    assert img.size[0] > img.size[1]  # two panels side by side


def test_plot_scatter_many_clusters(tmp_path):
    rng = np.random.default_rng(1)
    xy = rng.normal(size=(300, 2))
    clusters = rng.integers(0, 25, size=300)
    labels = rng.choice(["a", "b", "c"], size=300).tolist()
    out = tmp_path / "scatter25.png"
    plots.plot_scatter(xy, clusters, labels, out)
    _check_png(out)


def test_plot_scatter_rejects_bad_shape(tmp_path):
    _, clusters, labels = _data()
    with pytest.raises(ValueError):
        plots.plot_scatter(np.zeros((len(labels), 3)), clusters, labels, tmp_path / "x.png")
    with pytest.raises(ValueError):
        plots.plot_scatter(np.zeros((5, 2)), clusters, labels, tmp_path / "x.png")


def test_plot_thumbnails_gray_rgb_and_empty_cluster(tmp_path):
    rng = np.random.default_rng(0)
    images = {
        0: _thumbs(rng, 5, gray=True),
        1: _thumbs(rng, 3, gray=False),
        2: [],  # a cluster with no images
        3: [rng.integers(0, 256, size=(20, 20, 1), dtype=np.uint8)],  # HxWx1
    }
    captions = {0: ["benign"] * 5, 1: ["malignant", "normal", "benign"], 2: []}
    out = tmp_path / "thumbs" / "grid.png"
    plots.plot_thumbnails(images, out, labels_by_cluster=captions, title="Test thumbnails")
    _check_png(out)


def test_plot_thumbnails_without_captions_and_with_sizes(tmp_path):
    rng = np.random.default_rng(0)
    images = {5: _thumbs(rng, 2, gray=False), 1: _thumbs(rng, 4, gray=True)}
    out = tmp_path / "grid2.png"
    plots.plot_thumbnails(images, out, cluster_sizes={5: 120, 1: 80})
    _check_png(out)


def test_plot_thumbnails_all_empty(tmp_path):
    out = tmp_path / "empty.png"
    plots.plot_thumbnails({0: [], 1: []}, out)
    _check_png(out, min_w=50, min_h=50)
    out2 = tmp_path / "none.png"
    plots.plot_thumbnails({}, out2)
    _check_png(out2, min_w=50, min_h=50)


def test_plot_thumbnails_rejects_non_uint8(tmp_path):
    with pytest.raises(ValueError):
        plots.plot_thumbnails({0: [np.zeros((8, 8), dtype=float)]}, tmp_path / "x.png")


def test_plot_thumbnails_is_deterministic(tmp_path):
    rng = np.random.default_rng(3)
    images = {0: _thumbs(rng, 3), 1: _thumbs(rng, 2, gray=False)}
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    plots.plot_thumbnails(images, a)
    plots.plot_thumbnails(images, b)
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("with_ari", [True, False])
def test_plot_k_scan(tmp_path, with_ari):
    ks = [2, 3, 4, 5, 6]
    inertia = [1000.0, 600.0, 420.0, 380.0, 350.0]
    silhouette = [0.41, 0.55, 0.48, 0.40, float("nan")]
    ari = [0.3, 0.8, 0.7, 0.6, 0.5] if with_ari else None
    out = tmp_path / "kscan.png"
    plots.plot_k_scan(ks, inertia, silhouette, ari, out)
    _check_png(out, min_w=500)


def test_plot_k_scan_length_mismatch(tmp_path):
    with pytest.raises(ValueError):
        plots.plot_k_scan([2, 3], [1.0], [0.1, 0.2], None, tmp_path / "x.png")


def test_figures_are_closed(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.close("all")
    xy, clusters, labels = _data()
    rng = np.random.default_rng(0)
    plots.plot_contingency(clusters, labels, tmp_path / "c.png")
    plots.plot_scatter(xy, clusters, labels, tmp_path / "s.png")
    plots.plot_thumbnails({0: _thumbs(rng, 2)}, tmp_path / "t.png")
    plots.plot_k_scan([2, 3], [2.0, 1.0], [0.1, 0.2], [0.3, 0.4], tmp_path / "k.png")
    assert plt.get_fignums() == []
