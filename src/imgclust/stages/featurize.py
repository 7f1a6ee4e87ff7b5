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


def _load_stored(path: Path, data: bytes | None = None) -> np.ndarray:
    # images in data/augmented are already resized and converted; keep their stored mode
    return np.asarray(open_image(path, data=data), dtype=np.uint8)


def _fitted_extractor(method: str, cnn_params: dict):
    """The extractor of ``method``, fitted: what both engines run (the ray engine once per actor)."""
    # imported here: scikit-learn costs seconds, which the CLI and pool workers should not pay at import
    from imgclust.core.extractors import make_extractor

    return make_extractor(method, cnn_params).fit()


def _listing(manifest_csv: Path, image_dir: Path) -> tuple[list[dict], np.ndarray]:
    """The manifest's rows and its first image, whose shape every other image must have."""
    rows = read_image_listing(manifest_csv, image_dir, ("path", "class", "split", "source", "op"), "augment")
    return rows, _load_stored(image_dir / rows[0]["path"])


def _check_shapes(image_dir, shapes: set[tuple]) -> None:
    if len(shapes) > 1:
        raise InputDataError(f"images in {image_dir} differ in shape {sorted(shapes)}; rerun resize.")


def _decode_checked(image_dir: str, shape: tuple, path: str, data: bytes) -> np.ndarray:
    """A stored image from its bytes (ray engine, in an actor), refused unless of the first image's shape."""
    array = _load_stored(Path(path), data)
    _check_shapes(image_dir, {tuple(shape), array.shape})
    return array


def featurize(
    image_dir: Path,
    manifest_csv: Path,
    out_dir: Path,
    *,
    method: str,
    cnn_params: dict,
    batch_size: int,
    engine: str = "local",
    ray_settings=None,
) -> dict:
    """Write the feature store of the images listed in ``manifest_csv`` (rows in manifest order) to
    ``out_dir``; return its meta data. Features are written batch by batch, so memory stays bounded.
    ``engine`` "ray" computes them on Ray (``core.ray_engine``, with ``ray_settings``)."""
    from tqdm import tqdm

    image_dir = Path(image_dir)
    if engine == "ray":
        return _featurize_ray(image_dir, manifest_csv, out_dir, method, cnn_params, ray_settings)
    # fitting builds the CNN: missing weights fail here, before any image is read
    extractor = _fitted_extractor(method, cnn_params)
    rows, first = _listing(manifest_csv, image_dir)
    n_features = extractor.transform([first]).shape[1]
    dtype = METHOD_DTYPES[method]
    with atomic_dir(out_dir) as tmp:
        store = FeatureStoreWriter(tmp, len(rows), n_features, dtype)
        with tqdm(total=len(rows), desc=f"featurize ({method})", unit="img", disable=None, leave=False) as bar:
            # decoding runs in worker processes while this one extracts and writes
            decoded = imap(_load_stored, [image_dir / r["path"] for r in rows])
            for batch in iter_batches(rows, batch_size):
                arrays = [next(decoded) for _ in batch]
                _check_shapes(image_dir, {a.shape for a in arrays} | {first.shape})
                store.append(extractor.transform(arrays))
                bar.update(len(batch))
        return _close(store, rows, method, first, extractor)


def _close(store: FeatureStoreWriter, rows: list[dict], method: str, first: np.ndarray, extractor) -> dict:
    """Write the store's index and meta data (the same for both engines); return the meta data."""
    meta = {
        "method": method,
        "n_samples": len(rows),
        "n_features": store.n_features,
        "dtype": store.dtype.name,
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


def _featurize_ray(image_dir: Path, manifest_csv: Path, out_dir: Path, method: str, cnn_params: dict, settings) -> dict:
    """featurize with engine ray: each actor builds ``_fitted_extractor`` once; the driver reads the
    images, streams them to the actors and writes the rows, in order, as they come back."""
    import contextlib
    import functools

    from tqdm import tqdm

    from imgclust.core import ray_engine
    from imgclust.core.extractors import make_extractor

    ray_engine.import_ray()  # a missing extra fails here, before any image is read
    unfitted = make_extractor(method, cnn_params)  # checks the method; its parameters go into meta
    rows, first = _listing(manifest_csv, image_dir)
    paths = [image_dir / r["path"] for r in rows]
    factory = functools.partial(_fitted_extractor, method, cnn_params)
    decode = functools.partial(_decode_checked, str(image_dir), first.shape)
    store = None
    with (
        atomic_dir(out_dir) as tmp,
        tqdm(total=len(rows), desc=f"featurize ({method}, ray)", unit="img", disable=None, leave=False) as bar,
        contextlib.closing(ray_engine.extract(paths, factory, decode, settings)) as blocks,
    ):
        for _, features, errors in blocks:
            for error_type, message in errors:
                if message:
                    ray_engine.raise_error(error_type, message)
            if store is None:  # the width of the rows is known from the first block
                store = FeatureStoreWriter(tmp, len(rows), features.shape[1], METHOD_DTYPES[method])
            store.append(features)
            bar.update(len(features))
        return _close(store, rows, method, first, unfitted)


def cnn_params(params: config.CnnParams) -> dict:
    """featurize.cnn.* as KerasFeatureExtractor's parameters (``input_size`` 0: the backbone's default)."""
    return {**params.model_dump(), "input_size": params.input_size or None}


def ray_settings(params: config.RayParams):
    """featurize.ray.* as the ray engine's settings."""
    from imgclust.core.ray_engine import RaySettings

    return RaySettings(**params.model_dump())


def run(src: Path, manifest: Path, out: Path, params: config.FeaturizeParams) -> dict:
    return featurize(
        src,
        manifest,
        out,
        method=params.method,
        cnn_params=cnn_params(params.cnn),
        batch_size=params.batch_size,
        engine=params.engine,
        ray_settings=ray_settings(params.ray),
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
