"""Stage featurize: the pack data/augmented as a feature store (pixels: uint8, cnn: float32
embeddings). CNN rows computed before for the same image content, settings and code are read from
the per-image cache instead (``core.item_cache``); pixel rows are decoded by worker processes
straight into the store."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import numpy as np
import typer

from imgclust import config
from imgclust.core.feature_store import METHOD_DTYPES, FeatureStoreWriter, fill_rows, pixel_rows
from imgclust.core.fsutil import atomic_dir, read_image_listing
from imgclust.core.images import open_image
from imgclust.core.item_cache import NO_CACHE, ItemCache, cached, writable
from imgclust.core.packs import open_pack, read_named
from imgclust.core.parallel import imap, iter_batches, pmap_each
from imgclust.errors import InputDataError

# the keys of params.yaml this stage reads: its `params` in dvc.yaml, and all it may read
PARAMS = ("featurize",)
PIXEL_EXTRACTOR_PARAMS: dict = {}  # extractors.PixelFeatures().get_params(), recorded without making one


def _load_stored(path: Path, data: bytes) -> np.ndarray:
    # images in data/augmented are already resized and converted; keep their stored mode
    return np.asarray(open_image(path, data=data, from_pack=True), dtype=np.uint8)


def _load_item(job: tuple[Path, str]) -> np.ndarray:
    """An image of a pack, decoded (in a worker process, which opens the pack once)."""
    folder, path = job
    pack = open_pack(folder)
    return _load_stored(pack.name(path), pack.read(path))


def _fitted_extractor(method: str, cnn_params: dict):
    """The extractor of ``method``, fitted: what both engines run (the ray engine once per actor)."""
    # imported here: scikit-learn costs seconds, which the CLI and pool workers should not pay at import
    from imgclust.core.extractors import make_extractor

    return make_extractor(method, cnn_params).fit()


def _listing(manifest_csv: Path, image_dir: Path) -> tuple[list[dict], np.ndarray]:
    """The manifest's rows and its first image, whose shape every other image must have."""
    rows = read_image_listing(manifest_csv, image_dir, ("path", "class", "split", "source", "op"), "augment")
    return rows, _load_item((image_dir, rows[0]["path"]))


def _check_shapes(image_dir, shapes: set[tuple]) -> None:
    if len(shapes) > 1:
        raise InputDataError(f"images in {image_dir} differ in shape {sorted(shapes)}; rerun resize.")


def _decode_checked(image_dir: str, shape: tuple, path: str, data: bytes) -> np.ndarray:
    """A stored image from its bytes (ray engine, in an actor), refused unless of the first image's shape."""
    array = _load_stored(Path(path), data)
    _check_shapes(image_dir, {tuple(shape), array.shape})
    return array


# a cache entry: the image's shape (height, width, channels; 0 for gray) and the feature row
_SHAPE = np.dtype("<u4")


def _entry(shape: tuple, row: np.ndarray) -> bytes:
    return np.array([*shape, 0][:3], dtype=_SHAPE).tobytes() + row.tobytes()


def _entry_row(data: bytes, dtype, image_dir: Path, first_shape: tuple) -> np.ndarray:
    shape = tuple(int(n) for n in np.frombuffer(data[: 3 * _SHAPE.itemsize], dtype=_SHAPE))
    _check_shapes(image_dir, {tuple(n for n in shape if n) if shape[2] == 0 else shape, tuple(first_shape)})
    return np.frombuffer(data[3 * _SHAPE.itemsize :], dtype=dtype)


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
    cache: ItemCache = NO_CACHE,
) -> dict:
    """Write the feature store of the images listed in ``manifest_csv`` (rows in manifest order) to
    ``out_dir``; return its meta data. Features are computed batch by batch, so memory stays bounded,
    and only for images whose row ``cache`` does not hold (same image content, settings and code).
    ``engine`` "ray" computes them on Ray (``core.ray_engine``, with ``ray_settings``)."""
    from tqdm import tqdm

    image_dir, out_dir = Path(image_dir), Path(out_dir)
    desc = f"featurize ({method}{', ray' if engine == 'ray' else ''})"
    if cache.root is None and method == "pixels" and engine == "local":
        rows, first = _listing(manifest_csv, image_dir)
        return _pixels_in_place(open_pack(image_dir, producer="augment"), rows, first, batch_size, out_dir, desc)
    if engine == "ray":
        from imgclust.core import ray_engine

        ray_engine.import_ray()  # a missing extra fails here, before any image is read
    from imgclust.core.extractors import make_extractor

    if engine == "ray":  # the actors build the CNN; here it only checks the method and gives meta
        extractor = make_extractor(method, cnn_params)
    else:  # building the CNN first: missing weights fail here, before any image is read
        extractor = _fitted_extractor(method, cnn_params)
    rows, first = _listing(manifest_csv, image_dir)
    pack = open_pack(image_dir, producer="augment")
    dtype = METHOD_DTYPES[method]
    compute = _compute_ray if engine == "ray" else _compute_local
    if cache.root is None:  # nothing is kept: the rows go from the extractor straight to the store
        return _stream(
            pack, rows, first, extractor, method, cnn_params, batch_size, ray_settings, out_dir, compute, desc
        )
    keys = [cache.key(pack.sha256(row["path"])) for row in rows]
    with writable(cache, out_dir.parent) as store:
        todo = {key: row["path"] for key, row in zip(keys, rows) if not store.has(key)}  # each content once
        with tqdm(total=len(todo), desc=desc, unit="img", disable=None, leave=False) as bar:
            for batch_keys, shapes, features in compute(
                pack, list(todo.items()), extractor, method, cnn_params, batch_size, first.shape, ray_settings
            ):
                features = np.asarray(features).astype(dtype, copy=False)
                for key, shape, row in zip(batch_keys, shapes, features):
                    store.put(key, _entry(shape, row))
                bar.update(len(batch_keys))

        def row(i: int) -> np.ndarray:
            return _entry_row(cached(store, keys[i], rows[i]["path"]), dtype, image_dir, first.shape)

        with atomic_dir(out_dir) as tmp:
            writer = FeatureStoreWriter(tmp, len(rows), len(row(0)), dtype)
            for batch in iter_batches(range(len(rows)), batch_size):
                writer.append(np.stack([row(i) for i in batch]))
            return _close(writer, rows, method, first, _params(extractor))


def _fill_rows(job: tuple[int, list[str]], folder: Path, first_shape: tuple, store: tuple[Path, int]) -> int:
    """Decode the pack's images ``job`` = (first row, paths) and write their rows into the reserved
    feature file ``store`` (path, offset) in place, in a worker process; return how many."""
    start, paths = job
    pack = open_pack(folder)
    arrays = [_load_stored(pack.name(path), pack.read(path)) for path in paths]
    _check_shapes(folder, {a.shape for a in arrays} | {tuple(first_shape)})
    fill_rows(*store, start, pixel_rows(arrays))
    return len(paths)


def _pixels_in_place(pack, rows, first, batch_size, out_dir, desc) -> dict:
    """``featurize`` of pixels: the workers decode the images and write the rows into the store
    themselves, so no row passes through this process. Decoding is all a pixel row costs, so no
    per-image cache is kept, and no extractor is made (``feature_store.pixel_rows`` is
    ``PixelFeatures``' transform without scikit-learn's 1.3-1.7 s import). Measured on 20,200 images of 190 x 190 (2 cores, the stage alone): 11 s
    this way; rows sent back to this process, 14-18 s; through the cache, 17-21 s on a first run
    and 6.8 s when every row was cached. The cache would also keep 36 KB per image and setting,
    more than the PNG itself."""
    from tqdm import tqdm

    paths = [row["path"] for row in rows]
    jobs = [(start, paths[start : start + batch_size]) for start in range(0, len(paths), batch_size)]
    with atomic_dir(out_dir) as tmp, tqdm(total=len(rows), desc=desc, unit="img", disable=None, leave=False) as bar:
        writer = FeatureStoreWriter(tmp, len(rows), first.size, METHOD_DTYPES["pixels"])
        fill = partial(_fill_rows, folder=pack.folder, first_shape=first.shape, store=writer.reserve())
        # forked workers: nothing to import again (no TensorFlow runs in this process for pixels)
        for n in pmap_each(fill, jobs, desc=desc, chunksize=1):
            bar.update(n)
        return _close(writer, rows, "pixels", first, PIXEL_EXTRACTOR_PARAMS)


def _stream(pack, rows, first, extractor, method, cnn_params, batch_size, ray_settings, out_dir, compute, desc) -> dict:
    """``featurize`` without a cache: every row computed, in manifest order, and written as it comes."""
    from tqdm import tqdm

    dtype = METHOD_DTYPES[method]
    todo = [(None, row["path"]) for row in rows]
    with atomic_dir(out_dir) as tmp, tqdm(total=len(rows), desc=desc, unit="img", disable=None, leave=False) as bar:
        writer = None
        for _, _, features in compute(pack, todo, extractor, method, cnn_params, batch_size, first.shape, ray_settings):
            features = np.asarray(features).astype(dtype, copy=False)
            writer = writer or FeatureStoreWriter(tmp, len(rows), features.shape[1], dtype)
            writer.append(features)
            bar.update(len(features))
        return _close(writer, rows, method, first, _params(extractor))


def _compute_local(pack, todo, extractor, method, cnn_params, batch_size, first_shape, settings):
    """(keys, image shapes, features) of the images ``todo`` ((key, path)), batch by batch: decoded
    in worker processes while this one extracts."""
    decoded = imap(_load_item, [(pack.folder, path) for _, path in todo])
    for batch in iter_batches(todo, batch_size):
        arrays = [next(decoded) for _ in batch]
        _check_shapes(pack.folder, {a.shape for a in arrays} | {tuple(first_shape)})
        yield [key for key, _ in batch], [a.shape for a in arrays], extractor.transform(arrays)


def _compute_ray(pack, todo, extractor, method, cnn_params, batch_size, first_shape, settings):
    """As ``_compute_local``, on Ray: each actor builds ``_fitted_extractor`` once; the driver's
    node reads the images from the pack and streams them to the actors; rows come back in order."""
    import contextlib
    import functools

    from imgclust.core import ray_engine

    names = [str(pack.name(path)) for _, path in todo]
    factory = functools.partial(_fitted_extractor, method, cnn_params)
    decode = functools.partial(_decode_checked, str(pack.folder), tuple(first_shape))
    read = functools.partial(read_named, str(pack.folder))
    with contextlib.closing(ray_engine.extract(names, factory, decode, settings, read=read)) as blocks:
        for idx, features, errors in blocks:
            for error_type, message in errors:
                if message:
                    ray_engine.raise_error(error_type, message)
            # every image has the first one's shape (checked by decode in the actors)
            yield [todo[i][0] for i in idx], [tuple(first_shape)] * len(idx), features


def _params(extractor) -> dict:
    """The extractor's parameters as the feature store's meta data records them."""
    return {k: v for k, v in extractor.get_params().items() if k != "progress"}


def _close(store: FeatureStoreWriter, rows: list[dict], method: str, first: np.ndarray, extractor_params: dict) -> dict:
    """Write the store's index and meta data; return the meta data."""
    meta = {
        "method": method,
        "n_samples": len(rows),
        "n_features": store.n_features,
        "dtype": store.dtype.name,
        "image_shape": list(first.shape),
        "color_mode": "gray" if first.ndim == 2 else "rgb",
        "extractor": extractor_params,
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
        cache=_cache(params),
    )


def _cache(params: config.FeaturizeParams) -> ItemCache:
    """The per-image cache of CNN rows. Pixel rows are not kept (see ``_pixels_in_place``)."""
    if params.method == "pixels":
        return NO_CACHE
    # the engine and its settings do not change a row (checked by tests/system/test_ray_engine.py)
    return config.item_cache("featurize", __file__, params.model_dump(exclude={"engine", "ray"}))


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
