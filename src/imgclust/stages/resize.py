"""Stage resize: every image of the pack data/stripped at one size and color mode, in parallel,
into the pack data/resized. Images resized before with the same settings and code are read from
the per-image cache instead (``core.item_cache``)."""

from __future__ import annotations

from collections import Counter
from functools import partial
from pathlib import Path, PurePosixPath

import typer

from imgclust import config
from imgclust.core.fsutil import NAME_MAX, atomic_dir, long_names
from imgclust.core.images import COPY_NAME_RESERVE, MAX_IMAGE_SIDE, load_array, pil_mode, png_bytes, resample_filter
from imgclust.core.item_cache import NO_CACHE, ItemCache, cached, writable
from imgclust.core.packs import open_pack, write_pack
from imgclust.core.parallel import pmap_each
from imgclust.errors import InputDataError, OutputCollisionError, ParamError

# the keys of params.yaml this stage reads: its `params` in dvc.yaml, and all it may read
PARAMS = ("resize",)


def _resize_one(job: tuple[str, str], in_dir: Path, settings: tuple) -> tuple[str, bytes]:
    """(key, PNG bytes) of one image of the pack ``in_dir``, resized."""
    path, key = job
    pack = open_pack(in_dir)
    size, color_mode, resample = settings
    return key, png_bytes(load_array(pack.name(path), color_mode, size, resample, data=pack.read(path), from_pack=True))


def resize_images(
    in_dir: Path,
    out_dir: Path,
    width: int,
    height: int,
    color_mode: str,
    resample: str,
    workers: int | None = None,
    cache: ItemCache = NO_CACHE,
) -> dict:
    """Decode each image of the pack ``in_dir`` (EXIF orientation, any mode), convert to
    ``color_mode``, resize to ``width`` x ``height`` and write it as PNG under the same relative path
    (suffix .png) to the pack ``out_dir``. Images whose result ``cache`` holds are not decoded again."""
    if not (1 <= width <= MAX_IMAGE_SIDE and 1 <= height <= MAX_IMAGE_SIDE):
        raise ParamError(
            f"resize.width and resize.height must be between 1 and {MAX_IMAGE_SIDE}, got {width}x{height}."
        )
    pil_mode(color_mode), resample_filter(resample)  # validate before any work
    in_dir = Path(in_dir)
    pack = open_pack(in_dir, producer="strip_masks")
    targets: dict[str, str] = {}
    for source in pack.paths():
        rel = PurePosixPath(source).with_suffix(".png").as_posix()
        if rel in targets:
            raise OutputCollisionError(
                f"{pack.name(source)} and {pack.name(targets[rel])} would both be written as {rel}; rename one of them."
            )
        targets[rel] = source
    too_long = long_names(targets, extra=COPY_NAME_RESERVE)
    if too_long:
        raise InputDataError(
            f"{len(too_long)} file name(s) in {in_dir} are too long, e.g. {too_long[0]!r}: augmented copies add up "
            f"to {COPY_NAME_RESERVE} bytes to a name, and the file system allows {NAME_MAX}. Rename them to at "
            f"most {NAME_MAX - COPY_NAME_RESERVE} bytes (with .png) in the source and rerun."
        )
    settings = ((width, height), color_mode, resample)
    # one entry per source image content and settings: the output name is not part of it
    keys = {rel: cache.key(pack.sha256(source), repr(settings)) for rel, source in targets.items()}
    order = sorted(targets)  # the pack's order
    with writable(cache, Path(out_dir).parent) as store:
        missing: dict[str, str] = {}  # key -> source, each content once, in the pack's order
        for rel in order:
            if keys[rel] not in missing and not store.has(keys[rel]):
                missing[keys[rel]] = targets[rel]
        # the workers resize; this process alone writes the cache (one writer: no lock contention)
        # and packs each image as its turn comes, taking a new one from the workers as it arrives
        resized = pmap_each(
            partial(_resize_one, in_dir=pack.folder, settings=settings),
            [(source, key) for key, source in missing.items()],
            desc="resize",
            workers=workers,
        )
        uses = Counter(keys[rel] for rel in order)
        pending: dict[str, bytes] = {}  # a new image that a later item has too (the same content)

        def items():
            for rel in order:
                key = keys[rel]
                if key in pending:
                    data = pending[key]
                elif key in missing:
                    done, data = next(resized)  # pmap_each keeps the order of its items
                    store.put(done, data)
                else:
                    data = cached(store, key, rel)
                uses[key] -= 1
                if uses[key]:
                    pending[key] = data
                else:
                    pending.pop(key, None)
                yield rel, data

        try:
            with atomic_dir(out_dir) as tmp:
                write_pack(tmp, items())
        finally:
            resized.close()  # the pool ends here, also when the pack could not be written
    counts = Counter(rel.split("/", 1)[0] for rel in targets)
    return {
        "images_per_class": dict(sorted(counts.items())),
        "n_images": len(targets),
        "n_computed": len(missing),
        "width": width,
        "height": height,
        "mode": color_mode,
    }


def run(src: Path, out: Path, params: config.ResizeParams) -> dict:
    cache = config.item_cache("resize", __file__, params.model_dump())
    return resize_images(src, out, params.width, params.height, params.mode, params.resample, cache=cache)


def command(
    src: Path = typer.Option(..., "--in", help="Input folder of class subfolders."),
    out: Path = typer.Option(..., help="Output folder."),
) -> None:
    result = run(src, out, config.load(PARAMS).resize)
    typer.echo(
        f"resize: {result['n_images']} images ({result['n_computed']} computed, the others from the cache) -> {out} "
        f"at {result['width']}x{result['height']} {result['mode']}"
    )
