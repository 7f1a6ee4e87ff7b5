"""Turn data/augmented into a feature matrix (pixels: uint8, cnn: float32) with its index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer

from imgclust.errors import InputDataError, ParamError, did_you_mean
from imgclust.fsutil import atomic_dir, read_csv, read_image_listing, write_csv
from imgclust.images import open_image
from imgclust.parallel import imap, iter_batches

METHODS = ("pixels", "cnn")
INDEX_FIELDS = ("file", "class", "split", "source", "op")
FEATURES_FILE, INDEX_FILE, META_FILE = "features.npy", "index.csv", "meta.json"


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ParamError(f"unknown featurize.method {method!r}; use one of {', '.join(METHODS)}."
                         f"{did_you_mean(method, METHODS)}")


def _load_stored(path: Path) -> np.ndarray:
    # images in data/augmented are already resized and converted; keep their stored mode
    return np.asarray(open_image(path), dtype=np.uint8)


def featurize(image_dir: Path, manifest_csv: Path, out_dir: Path, method: str = "pixels",
              cnn_params: dict | None = None, batch_size: int = 256) -> dict:
    """Write ``features.npy`` (rows in manifest order), ``index.csv`` and ``meta.json`` to ``out_dir``.

    Features are written batch by batch into a memory-mapped .npy, so memory stays bounded.
    """
    from imgclust.features import PixelFeatures

    check_method(method)
    extractor = PixelFeatures().fit()
    if method == "cnn":
        from imgclust.cnn import KerasFeatureExtractor

        # fitting builds the backbone: missing weights fail here, before any image is read
        extractor = KerasFeatureExtractor(**(cnn_params or {}), progress=False).fit()
    image_dir = Path(image_dir)
    rows = read_image_listing(manifest_csv, image_dir, ("path", "class", "split", "source", "op"), "augment")
    first = _load_stored(image_dir / rows[0]["path"])
    n_features = extractor.transform([first]).shape[1]
    dtype = np.uint8 if method == "pixels" else np.float32
    from tqdm import tqdm

    with atomic_dir(out_dir) as tmp:
        matrix = np.lib.format.open_memmap(tmp / FEATURES_FILE, mode="w+", dtype=dtype,
                                           shape=(len(rows), n_features))
        with tqdm(total=len(rows), desc=f"featurize ({method})", unit="img", disable=None, leave=False) as bar:
            start = 0
            # decoding runs in worker processes while this one extracts and writes
            decoded = imap(_load_stored, [image_dir / r["path"] for r in rows])
            for batch in iter_batches(rows, batch_size):
                arrays = [next(decoded) for _ in batch]
                shapes = {a.shape for a in arrays} | {first.shape}
                if len(shapes) > 1:
                    raise InputDataError(f"images in {image_dir} differ in shape {sorted(shapes)}; rerun resize.")
                matrix[start:start + len(batch)] = extractor.transform(arrays)
                start += len(batch)
                matrix.flush()
                release_pages(matrix)
                bar.update(len(batch))
        matrix.flush()
        del matrix
        write_csv(tmp / INDEX_FILE, ({"file": r["path"], "class": r["class"], "split": r["split"],
                                      "source": r["source"], "op": r["op"]} for r in rows), INDEX_FIELDS)
        meta = {"method": method, "n_samples": len(rows), "n_features": n_features,
                "dtype": np.dtype(dtype).name, "image_shape": list(first.shape),
                "color_mode": "gray" if first.ndim == 2 else "rgb",
                "extractor": {k: v for k, v in extractor.get_params().items() if k != "progress"}}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def release_pages(array: np.ndarray) -> None:
    """Drop a memory-mapped array's pages from this process's resident memory (the OS keeps them
    in its page cache), so streaming batch by batch over a large feature file keeps RSS bounded."""
    import mmap

    mapping = getattr(array, "_mmap", None)
    if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


def load_features(features_dir: Path, mmap: bool = True) -> tuple[np.ndarray, list[dict], dict]:
    """(features, index rows, meta) of a featurize output folder; features memory-mapped."""
    features_dir = Path(features_dir)
    path = features_dir / FEATURES_FILE
    if not path.is_file():
        raise InputDataError(f"{path}: not found; run the featurize stage (dvc repro featurize).")
    features = np.load(path, mmap_mode="r" if mmap else None)
    index = read_csv(features_dir / INDEX_FILE, required=INDEX_FIELDS)
    try:
        meta = json.loads((features_dir / META_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise InputDataError(f"{features_dir / META_FILE}: unreadable ({exc}); rerun featurize.") from None
    if len(index) != features.shape[0]:
        raise InputDataError(f"{features_dir}: {features.shape[0]} feature rows but {len(index)} index rows; "
                             "rerun featurize.")
    return features, index, meta


def command(
    src: Path = typer.Option(Path("data/augmented"), "--in", help="Folder of augmented images."),
    manifest: Path = typer.Option(Path("data/manifests/augmented.csv"), help="Augmented manifest."),
    out: Path = typer.Option(Path("data/features"), help="Output folder."),
    method: str = typer.Option("pixels", help="pixels or cnn."),
    batch_size: int = typer.Option(256, help="Images per batch written to disk."),
    backbone: str = typer.Option("mobilenet", help="cnn: keras.applications backbone."),
    alpha: float = typer.Option(1.0, help="cnn: width multiplier (mobilenet, mobilenet_v2)."),
    weights: str = typer.Option("imagenet", help="cnn: 'imagenet', 'none' or a weights file path."),
    input_size: int = typer.Option(0, help="cnn: square input size in px (0: backbone default)."),
    pooling: str = typer.Option("avg", help="cnn: global pooling, avg or max."),
    cnn_batch_size: int = typer.Option(32, help="cnn: images per forward pass."),
) -> None:
    cnn_params = {"backbone": backbone, "alpha": alpha, "weights": weights,
                  "input_size": input_size or None, "pooling": pooling, "batch_size": cnn_batch_size}
    import time

    start = time.perf_counter()
    meta = featurize(src, manifest, out, method, cnn_params if method == "cnn" else None, batch_size)
    elapsed = time.perf_counter() - start  # printed, not stored: outputs must not depend on timing
    typer.echo(f"featurize ({method}): {meta['n_samples']} x {meta['n_features']} {meta['dtype']} -> {out} "
               f"in {elapsed:.1f} s ({meta['n_samples'] / elapsed:.0f} images/s, model load included)")
