"""Diagnostic figures for a clustering run, written as PNG files.

matplotlib is imported lazily and switched to the non-interactive Agg backend inside each
function, so importing this module costs nothing and never opens a window. Every function
creates the parent folder of ``path``, writes one PNG there and closes its figure. Output is
deterministic for given inputs (no randomness, fixed dpi, fixed layout rules). Every text (class
names, captions, titles) is drawn as plain text: neither TeX nor mathtext parses it, so a class
folder named ``$\\bad$ lesion`` is shown as it is spelled instead of failing the plot.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imgclust.core.metrics import contingency

__all__ = ["plot_contingency", "plot_scatter", "plot_thumbnails", "plot_k_scan"]

_DPI = 100


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_text(func):
    """Run ``func`` (which creates, draws and saves its figure) with every text plain: no mathtext
    for ``$...$`` and no TeX, whatever the user's matplotlibrc says."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
            return func(*args, **kwargs)

    return wrapper


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, format="png", dpi=_DPI, bbox_inches="tight", facecolor="white")
    finally:
        plt.close(fig)


# class colours come from other palettes than cluster colours, so cluster 0 and the first class
# are never the same blue: the two panels are not to be read as one colour key
_CLASS_PALETTES = ((8, "Dark2"), (12, "Set3"))


def _class_palette(n: int) -> list:
    import matplotlib

    for size, name in _CLASS_PALETTES:
        if n <= size:
            cmap = matplotlib.colormaps[name]
            return [cmap(i) for i in range(n)]
    cmap = matplotlib.colormaps["viridis"]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def _palette(n: int) -> list:
    """n distinct colours: tab10 / tab20 when they suffice, else evenly spaced on a colormap."""
    import matplotlib

    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [cmap(i) for i in range(n)]
    if n <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return [cmap(i) for i in range(n)]
    cmap = matplotlib.colormaps["turbo"]
    return [cmap(i / (n - 1)) for i in range(n)]


@_plain_text
def plot_contingency(
    clusters,
    labels: Sequence[str],
    path: Path,
    title: str = "Clusters vs true classes",
) -> None:
    """Heatmap of counts, clusters as rows and classes as columns, counts written in the cells."""
    plt = _pyplot()
    counts, cluster_ids, class_names = contingency(clusters, labels)
    n_rows, n_cols = counts.shape

    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * n_cols + 3.0), max(3.0, 0.45 * n_rows + 1.8)))
    im = ax.imshow(counts, cmap="Blues", aspect="auto", vmin=0, vmax=max(int(counts.max()), 1))
    cbar = fig.colorbar(im, ax=ax)
    cbar.set_label("images")

    ax.set_xticks(
        range(n_cols), labels=class_names, rotation=30 if n_cols > 4 else 0, ha="right" if n_cols > 4 else "center"
    )
    ax.set_yticks(range(n_rows), labels=[str(k) for k in cluster_ids])
    ax.set_xlabel("true class")
    ax.set_ylabel("cluster")
    ax.set_title(title)

    threshold = counts.max() / 2.0
    fontsize = 9 if n_rows <= 20 and n_cols <= 12 else 6
    for i in range(n_rows):
        for j in range(n_cols):
            v = int(counts[i, j])
            ax.text(
                j,
                i,
                str(v),
                ha="center",
                va="center",
                fontsize=fontsize,
                color="white" if v > threshold else "black",
            )
    _save(fig, path)


@_plain_text
def plot_scatter(
    embedding_2d: np.ndarray,
    clusters,
    labels: Sequence[str],
    path: Path,
    title: str = "2-D embedding",
    axis_labels: tuple[str, str] = ("dimension 1", "dimension 2"),
) -> None:
    """Two panels side by side: points coloured by cluster id (left, one palette) and by true class
    (right, another palette), each legend outside its axes; ``axis_labels`` name the projection."""
    plt = _pyplot()
    xy = np.asarray(embedding_2d, dtype=float)
    c = np.asarray(clusters).reshape(-1)
    lab = np.asarray([str(s) for s in labels], dtype=object)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"embedding_2d must have shape (n, 2), got {xy.shape}")
    if not (xy.shape[0] == c.shape[0] == lab.shape[0]):
        raise ValueError(f"length mismatch: {xy.shape[0]} points, {c.shape[0]} cluster ids, {lab.shape[0]} labels")
    n = xy.shape[0]
    size = float(np.clip(3000.0 / max(n, 1), 2.0, 30.0))

    fig, axes = plt.subplots(1, 2, figsize=(14, 5.2), sharex=True, sharey=True)
    panels = (
        (axes[0], c, [int(k) for k in np.unique(c)], "cluster", "coloured by cluster", _palette),
        (axes[1], lab, sorted(set(lab.tolist())), "class", "coloured by true class", _class_palette),
    )
    for ax, groups, keys, legend_title, subtitle, palette in panels:
        colours = palette(len(keys))
        for key, colour in zip(keys, colours):
            mask = groups == key
            ax.scatter(
                xy[mask, 0],
                xy[mask, 1],
                s=size,
                color=colour,
                alpha=0.75,
                linewidths=0,
                label=f"{key} (n={int(mask.sum())})",
            )
        ax.set_title(subtitle)
        ax.set_xlabel(axis_labels[0])
        ax.set_ylabel(axis_labels[1])
        ax.tick_params(labelleft=True)
        if keys:
            ax.legend(
                title=legend_title,
                loc="upper left",
                bbox_to_anchor=(1.01, 1.0),
                ncol=1 if len(keys) <= 16 else 2,
                fontsize=8,
                markerscale=max(1.0, 20.0 / size) ** 0.5,
                frameon=False,
            )
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def _prepare_image(img) -> np.ndarray:
    a = np.asarray(img)
    if a.dtype != np.uint8:
        raise ValueError(f"thumbnails must be uint8 arrays, got dtype {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ValueError(f"thumbnails must be HxW, HxWx1, HxWx3 or HxWx4, got shape {a.shape}")
    return a


@_plain_text
def plot_thumbnails(
    images_by_cluster: dict[int, list[np.ndarray]],
    path: Path,
    labels_by_cluster: dict[int, list[str]] | None = None,
    title: str = "Example images per cluster",
    *,
    cluster_sizes: dict[int, int] | None = None,
    row_notes: dict[int, str] | None = None,
    copies_by_cluster: dict[int, list[bool]] | None = None,
) -> None:
    """Grid with one row per cluster (sorted by id) and its thumbnails left to right.

    Images are uint8 arrays, HxW (drawn in gray, 0..255) or HxWx3. Each row is labelled
    ``cluster k (n=...)`` where n is ``cluster_sizes[k]`` if given, else the number of images
    passed for that cluster. ``labels_by_cluster`` adds the true class under each thumbnail.
    Cells beyond a row's images (or a whole row, for a cluster with no images) stay blank.
    ``row_notes`` adds lines under a row's label (its copies, its majority class); thumbnails marked
    True in ``copies_by_cluster`` (augmented copies) get an orange frame.
    """
    plt = _pyplot()
    keys = sorted(images_by_cluster)
    labels_by_cluster = labels_by_cluster or {}
    cluster_sizes = cluster_sizes or {}
    prepared = {k: [_prepare_image(im) for im in images_by_cluster[k]] for k in keys}

    n_rows = max(len(keys), 1)
    n_cols = max([len(v) for v in prepared.values()] + [1])
    has_captions = any(labels_by_cluster.get(k) for k in keys)
    cell_h = 1.55 if has_captions else 1.35
    fig, axes = plt.subplots(
        n_rows,
        n_cols,
        squeeze=False,
        figsize=(1.35 * n_cols + 1.6, cell_h * n_rows + 0.7),
    )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)

    if not keys:
        axes[0, 0].text(0.5, 0.5, "no clusters", ha="center", va="center", transform=axes[0, 0].transAxes)

    for r, k in enumerate(keys):
        imgs = prepared[k]
        captions = list(labels_by_cluster.get(k) or [])
        n = int(cluster_sizes.get(k, len(imgs)))
        note = (row_notes or {}).get(k)
        axes[r, 0].set_ylabel(
            f"cluster {k}\n(n={n})" + (f"\n{note}" if note else ""),
            rotation=0,
            ha="right",
            va="center",
            fontsize=9 if not note else 8,
            labelpad=8,
        )
        marks = list((copies_by_cluster or {}).get(k) or [])
        for col, img in enumerate(imgs):
            ax = axes[r, col]
            if col < len(marks) and marks[col]:
                for spine in ax.spines.values():
                    spine.set_visible(True)
                    spine.set_edgecolor("tab:orange")
                    spine.set_linewidth(2.5)
            if img.ndim == 2:
                ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            else:
                ax.imshow(img, interpolation="nearest")
            if col < len(captions):
                ax.set_xlabel(str(captions[col]), fontsize=7, labelpad=2)
    fig.suptitle(title)
    _save(fig, path)


def _floats(values, name: str, n: int) -> np.ndarray:
    vals = [math.nan if v is None else float(v) for v in values]
    if len(vals) != n:
        raise ValueError(f"{name} has {len(vals)} values but ks has {n}")
    return np.asarray(vals, dtype=float)


@_plain_text
def plot_k_scan(
    ks: Sequence[int],
    inertia: Sequence[float],
    silhouette: Sequence[float],
    ari: Sequence[float] | None,
    path: Path,
    title: str = "K-means scan over k",
    split: str = "train",
) -> None:
    """Left panel: inertia vs k (elbow). Right panel: silhouette, and ARI if given, vs k; every
    score is of the ``split`` images, which the panels say."""
    plt = _pyplot()
    k = np.asarray([int(v) for v in ks])
    n = k.size
    if n == 0:
        raise ValueError("ks is empty")
    inert = _floats(inertia, "inertia", n)
    sil = _floats(silhouette, "silhouette", n)
    ar = _floats(ari, "ari", n) if ari is not None else None
    order = np.argsort(k, kind="stable")
    k, inert, sil = k[order], inert[order], sil[order]
    if ar is not None:
        ar = ar[order]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot(k, inert, marker="o", color="tab:blue")
    ax1.set_title(f"inertia (elbow), {split} images")
    ax1.set_xlabel("k (number of clusters)")
    ax1.set_ylabel("inertia (within-cluster sum of squares)")
    ax1.grid(True, alpha=0.3)

    ax2.plot(k, sil, marker="o", color="tab:orange", label=f"silhouette ({split} images)")
    if ar is not None:
        ax2.plot(k, ar, marker="s", color="tab:green", label=f"ARI vs true classes ({split} images)")
    ax2.set_title("silhouette" + (" and ARI" if ar is not None else "") + f", {split} images")
    ax2.set_xlabel("k (number of clusters)")
    ax2.set_ylabel("score")
    ax2.grid(True, alpha=0.3)
    ax2.legend(loc="best", fontsize=8)
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        if n <= 15:
            ax.set_xticks(np.unique(k))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    _save(fig, path)


def scatter_axis_labels(has_pca: bool, variance_ratio: Sequence[float] | None = None) -> tuple[str, str]:
    """What the scatter's axes are: the model's first two principal components (with the share of
    variance each explains, when known), or those of a PCA(2) of the features."""
    if not has_pca:
        return ("PC 1 of a PCA(2) of the features", "PC 2 of a PCA(2) of the features")
    shares = [f" ({v:.0%} of variance)" for v in (variance_ratio or [])[:2]] or ["", ""]
    return (f"PC 1 of the model's PCA{shares[0]}", f"PC 2 of the model's PCA{shares[1]}")


def cluster_notes(index: list[dict], clusters: np.ndarray) -> dict[int, str]:
    """Per cluster: how many members are augmented copies (and of which op) and the share of its
    majority class, so a cluster made of copies (an orientation cluster) shows as such."""
    from collections import Counter

    notes = {}
    for cluster in sorted(set(clusters.tolist())):
        rows = [index[i] for i in np.flatnonzero(clusters == cluster)]
        ops = Counter(r["op"] for r in rows if r["op"] != "none")
        classes = Counter(r["class"] for r in rows)
        top, n_top = min(classes.items(), key=lambda item: (-item[1], item[0]))
        copies = sum(ops.values())
        op_text = ", ".join(f"{op} {n}" for op, n in sorted(ops.items(), key=lambda item: (-item[1], item[0]))[:2])
        lines = [f"{copies} copies" + (f": {op_text}" if op_text else ""), f"majority {top} {n_top / len(rows):.0%}"]
        notes[cluster] = "\n".join(lines)
    return notes


def scatter_coordinates(embedding: np.ndarray, has_pca: bool) -> np.ndarray:
    """2-D view: the first two PCA components when the model has PCA, else a PCA(2) of the features."""
    if has_pca and embedding.shape[1] >= 2:
        return embedding[:, :2]
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=0).fit_transform(embedding)


def thumbnails_by_cluster(
    index: list[dict], clusters: np.ndarray, image_dir: Path, per_cluster: int, seed: int = 0
) -> tuple[dict[int, list[np.ndarray]], dict[int, list[str]]]:
    """Up to ``per_cluster`` images of each cluster (originals first; a cluster made only of
    augmented copies shows those, captioned with the op) and their captions."""
    images, captions, _ = thumbnails_with_copies(index, clusters, image_dir, per_cluster, seed)
    return images, captions


def thumbnails_with_copies(
    index: list[dict], clusters: np.ndarray, image_dir: Path, per_cluster: int, seed: int = 0
) -> tuple[dict[int, list[np.ndarray]], dict[int, list[str]], dict[int, list[bool]]]:
    """``thumbnails_by_cluster`` and, per thumbnail, whether it is an augmented copy."""
    import io

    from PIL import Image

    from imgclust.core.packs import open_pack

    pack = open_pack(image_dir, producer="augment")
    rng = np.random.default_rng(seed)
    images: dict[int, list[np.ndarray]] = {}
    captions: dict[int, list[str]] = {}
    copies: dict[int, list[bool]] = {}
    originals = np.array([row["op"] == "none" for row in index])
    for cluster in sorted(set(clusters.tolist())):
        chosen = []
        for pool in (
            np.flatnonzero((clusters == cluster) & originals),
            np.flatnonzero((clusters == cluster) & ~originals),
        ):
            take = min(per_cluster - len(chosen), len(pool))
            chosen += sorted(rng.choice(pool, size=take, replace=False).tolist()) if take > 0 else []
        images[cluster] = [np.asarray(Image.open(io.BytesIO(pack.read(index[i]["file"])))) for i in chosen]
        captions[cluster] = [
            index[i]["class"] + ("" if index[i]["op"] == "none" else f" ({index[i]['op']})") for i in chosen
        ]
        copies[cluster] = [index[i]["op"] != "none" for i in chosen]
    return images, captions, copies
