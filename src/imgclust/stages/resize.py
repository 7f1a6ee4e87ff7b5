"""Stage resize: every image of data/stripped at one size and color mode, in parallel."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import typer

from imgclust import config
from imgclust.core.fsutil import NAME_MAX, atomic_dir, class_folders, is_image_file, long_names
from imgclust.core.images import COPY_NAME_RESERVE, MAX_IMAGE_SIDE, load_array, pil_mode, resample_filter, save_new_png
from imgclust.core.parallel import pmap
from imgclust.errors import InputDataError, OutputCollisionError, ParamError

# the keys of params.yaml this stage reads: its `params` in dvc.yaml, and all it may read
PARAMS = ("resize",)


def _resize_one(job: tuple[Path, Path], size: tuple[int, int], color_mode: str, resample: str) -> None:
    source, target = job
    array = load_array(source, color_mode, size, resample)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_new_png(array, target)


def resize_images(
    in_dir: Path, out_dir: Path, width: int, height: int, color_mode: str, resample: str, workers: int | None = None
) -> dict:
    """Decode each image (EXIF orientation, any mode), convert to ``color_mode``, resize to
    ``width`` x ``height`` and save it as PNG under the same relative path in ``out_dir``."""
    if not (1 <= width <= MAX_IMAGE_SIDE and 1 <= height <= MAX_IMAGE_SIDE):
        raise ParamError(
            f"resize.width and resize.height must be between 1 and {MAX_IMAGE_SIDE}, got {width}x{height}."
        )
    pil_mode(color_mode), resample_filter(resample)  # validate before any work
    in_dir = Path(in_dir)
    sources = [
        p for folder in class_folders(in_dir) for p in sorted(folder.rglob("*")) if p.is_file() and is_image_file(p)
    ]
    targets: dict[Path, Path] = {}
    for source in sources:
        rel = source.relative_to(in_dir).with_suffix(".png")
        if rel in targets:
            raise OutputCollisionError(
                f"{source} and {targets[rel]} would both be written as {rel}; rename one of them."
            )
        targets[rel] = source
    too_long = long_names((rel.as_posix() for rel in targets), extra=COPY_NAME_RESERVE)
    if too_long:
        raise InputDataError(
            f"{len(too_long)} file name(s) in {in_dir} are too long, e.g. {too_long[0]!r}: augmented copies add up "
            f"to {COPY_NAME_RESERVE} bytes to a name, and the file system allows {NAME_MAX}. Rename them to at "
            f"most {NAME_MAX - COPY_NAME_RESERVE} bytes (with .png) in the source and rerun."
        )
    counts: dict[str, int] = {}
    with atomic_dir(out_dir) as tmp:
        jobs = [(source, tmp / rel) for rel, source in targets.items()]
        pmap(
            partial(_resize_one, size=(width, height), color_mode=color_mode, resample=resample),
            jobs,
            desc="resize",
            workers=workers,
        )
        for rel in targets:
            counts[rel.parts[0]] = counts.get(rel.parts[0], 0) + 1
    return {"images_per_class": counts, "n_images": len(targets), "width": width, "height": height, "mode": color_mode}


def run(src: Path, out: Path, params: config.ResizeParams) -> dict:
    return resize_images(src, out, params.width, params.height, params.mode, params.resample)


def command(
    src: Path = typer.Option(..., "--in", help="Input folder of class subfolders."),
    out: Path = typer.Option(..., help="Output folder."),
) -> None:
    result = run(src, out, config.load(PARAMS).resize)
    typer.echo(f"resize: {result['n_images']} images -> {out} at {result['width']}x{result['height']} {result['mode']}")
