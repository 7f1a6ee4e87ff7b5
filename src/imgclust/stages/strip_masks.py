"""Stage strip_masks: pass the pack data/raw on to the pack data/stripped without the segmentation
mask files. The report lists what each pattern removed, and the console warns about every
removed file that has no image beside it (``x_mask.png`` without ``x.png``): likely a real image."""

from __future__ import annotations

import fnmatch
from pathlib import Path, PurePosixPath

import typer

from imgclust import config
from imgclust.core.fsutil import atomic_dir, write_json
from imgclust.core.packs import Pack, write_pack
from imgclust.errors import EmptyClassError, ParamError

# the keys of params.yaml this stage reads: its `params` in dvc.yaml, and all it may read
PARAMS = ("strip_masks",)
SHOWN_ALONE = 20  # mask-named files without an image that the console names one by one


def is_mask(name: str, patterns: list[str]) -> bool:
    return matching_pattern(name, patterns) is not None


def matching_pattern(name: str, patterns: list[str]) -> str | None:
    """The first of ``patterns`` (fnmatch, case-insensitive) that the file ``name`` matches, or None."""
    return next((pattern for pattern in patterns if fnmatch.fnmatchcase(name.lower(), pattern.lower())), None)


def _has_image_beside(mask: PurePosixPath, image_stems: set[str]) -> bool:
    """Whether an image kept in the mask's folder is what the mask outlines: its stem followed by a
    separator starts the mask's stem (``x.png`` for ``x_mask.png`` or ``x_mask_1.png``)."""
    stem = mask.stem.lower()
    return any(stem[:i] in image_stems for i in range(1, len(stem)) if not stem[i].isalnum())


def strip_masks(raw_dir: Path, out_dir: Path, patterns: list[str]) -> dict:
    """Pass every image of the pack ``raw_dir`` that matches none of the mask ``patterns`` (fnmatch,
    on the file name, case-insensitive) on to the pack ``out_dir`` unchanged; ``raw_dir`` is only
    read. Returns counts, the files each pattern removed (a file under the first pattern it
    matches), and the removed files with no image beside them (``x_mask.png`` without ``x.png``):
    probably real images whose name happens to match, which the caller should warn about."""
    if not patterns:
        raise ParamError("strip_masks.patterns is empty; give at least one mask pattern such as '*_mask*.png'.")
    raw = Pack(raw_dir, producer="ingest")
    by_class: dict[str, list[str]] = {}
    for rel in raw.paths():
        by_class.setdefault(rel.split("/", 1)[0], []).append(rel)
    kept: dict[str, int] = {}
    masks: dict[str, int] = {}
    removed: dict[str, list[str]] = {pattern: [] for pattern in patterns}
    alone: list[str] = []
    keep: list[str] = []
    for cls, paths in by_class.items():
        folder_masks: list[PurePosixPath] = []
        image_stems: dict[PurePosixPath, set[str]] = {}  # folder -> stems (lower case) of the images kept there
        n_kept = 0
        for rel in paths:
            path = PurePosixPath(rel)
            pattern = matching_pattern(path.name, patterns)
            if pattern is not None:
                removed[pattern].append(rel)
                folder_masks.append(path)
                continue
            keep.append(rel)
            image_stems.setdefault(path.parent, set()).add(path.stem.lower())
            n_kept += 1
        alone += [
            mask.as_posix() for mask in folder_masks if not _has_image_beside(mask, image_stems.get(mask.parent, set()))
        ]
        if not n_kept:
            raise EmptyClassError(
                f"{raw_dir / cls}: no image left after removing masks ({len(folder_masks)} mask file(s) matched "
                f"{patterns}). Check strip_masks.patterns or the class folder's content."
            )
        kept[cls], masks[cls] = n_kept, len(folder_masks)
    with atomic_dir(out_dir) as tmp:
        write_pack(tmp, raw.iter_verified(keep))
    return {
        "images_per_class": kept,
        "masks_per_class": masks,
        "n_images": sum(kept.values()),
        "n_masks": sum(masks.values()),
        "n_removed_by_pattern": {pattern: len(paths) for pattern, paths in removed.items()},
        "removed_by_pattern": removed,
        "masks_without_image": alone,
    }


def run(raw: Path, out: Path, report: Path, params: config.StripMasksParams) -> dict:
    result = strip_masks(raw, out, params.patterns)
    write_json(report, result)
    return result


def command(
    raw: Path = typer.Option(..., help="Raw snapshot folder (read only)."),
    out: Path = typer.Option(..., help="Output folder of images without masks."),
    report: Path = typer.Option(..., help="Stage report (counts)."),
) -> None:
    result = run(raw, out, report, config.load(PARAMS).strip_masks)
    per_pattern = ", ".join(f"{n} by {pattern!r}" for pattern, n in result["n_removed_by_pattern"].items())
    typer.echo(
        f"strip-masks: kept {result['n_images']} images, removed {result['n_masks']} masks ({per_pattern}) -> {out}"
    )
    alone = result["masks_without_image"]
    for rel in alone[:SHOWN_ALONE]:
        typer.secho(
            f"warning: {raw / rel} was removed as a mask, but no image of its name is beside it: "
            "if it is a real image, rename it or narrow strip_masks.patterns",
            err=True,
            fg=typer.colors.YELLOW,
        )
    if len(alone) > SHOWN_ALONE:
        typer.secho(
            f"warning: {len(alone) - SHOWN_ALONE} more such file(s); all are listed under "
            f"masks_without_image in {report}",
            err=True,
            fg=typer.colors.YELLOW,
        )
