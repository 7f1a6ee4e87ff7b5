"""Stage featurize: data/augmented as a feature store (pixels: uint8, cnn: float32 embeddings)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import typer

from imgclust import config
from imgclust.core.feature_store import METHOD_DTYPES, FeatureStoreWriter
from imgclust.core.fsutil import atomic_dir, read_image_listing
from imgclust.core.images import open_image
from imgclust.core.parallel import imap, iter_batches
from imgclust.errors import InputDataError

# the keys of params.yaml this stage reads: its `params` in dvc.yaml, and all it may read
PARAMS = ("featurize",)


def _load_stored(path: Path) -> np.ndarray:
    # images in data/augmented are already resized and converted; keep their stored mode
    return np.asarray(open_image(path), dtype=np.uint8)


def featurize(
    image_dir: Path, manifest_csv: Path, out_dir: Path, *, method: str, cnn_params: dict, batch_size: int
) -> dict:
    """Write the feature store of the images listed in ``manifest_csv`` (rows in manifest order) to
    ``out_dir``; return its meta data. Features are written batch by batch, so memory stays bounded."""
    from tqdm import tqdm

    # imported here: scikit-learn costs seconds, which the CLI and pool workers should not pay at import
    from imgclust.core.extractors import make_extractor

    # fitting builds the CNN: missing weights fail here, before any image is read
    extractor = make_extractor(method, cnn_params).fit()
    image_dir = Path(image_dir)
    rows = read_image_listing(manifest_csv, image_dir, ("path", "class", "split", "source", "op"), "augment")
    first = _load_stored(image_dir / rows[0]["path"])
    n_features = extractor.transform([first]).shape[1]
    dtype = METHOD_DTYPES[method]
    with atomic_dir(out_dir) as tmp:
        store = FeatureStoreWriter(tmp, len(rows), n_features, dtype)
        with tqdm(total=len(rows), desc=f"featurize ({method})", unit="img", disable=None, leave=False) as bar:
            # decoding runs in worker processes while this one extracts and writes
            decoded = imap(_load_stored, [image_dir / r["path"] for r in rows])
            for batch in iter_batches(rows, batch_size):
                arrays = [next(decoded) for _ in batch]
                shapes = {a.shape for a in arrays} | {first.shape}
                if len(shapes) > 1:
                    raise InputDataError(f"images in {image_dir} differ in shape {sorted(shapes)}; rerun resize.")
                store.append(extractor.transform(arrays))
                bar.update(len(batch))
        meta = {
            "method": method,
            "n_samples": len(rows),
            "n_features": n_features,
            "dtype": np.dtype(dtype).name,
            "image_shape": list(first.shape),
            "color_mode": "gray" if first.ndim == 2 else "rgb",
            "extractor": {k: v for k, v in extractor.get_params().items() if k != "progress"},
        }
        store.close(
            (
                {"file": r["path"], "class": r["class"], "split": r["split"], "source": r["source"], "op": r["op"]}
                for r in rows
            ),
            meta,
        )
    return meta


def cnn_params(params: config.CnnParams) -> dict:
    """featurize.cnn.* as KerasFeatureExtractor's parameters (``input_size`` 0: the backbone's default)."""
    return {**params.model_dump(), "input_size": params.input_size or None}


def run(src: Path, manifest: Path, out: Path, params: config.FeaturizeParams) -> dict:
    return featurize(
        src, manifest, out, method=params.method, cnn_params=cnn_params(params.cnn), batch_size=params.batch_size
    )


def command(
    src: Path = typer.Option(..., "--in", help="Folder of the images listed in the manifest."),
    manifest: Path = typer.Option(..., help="augment's manifest CSV."),
    out: Path = typer.Option(..., help="Feature store folder to write."),
) -> None:
    start = time.perf_counter()
    meta = run(src, manifest, out, config.load(PARAMS).featurize)
    elapsed = time.perf_counter() - start  # printed, not stored: outputs must not depend on timing
    typer.echo(
        f"featurize ({meta['method']}): {meta['n_samples']} x {meta['n_features']} {meta['dtype']} -> {out} "
        f"in {elapsed:.1f} s ({meta['n_samples'] / elapsed:.0f} images/s, model load included)"
    )
