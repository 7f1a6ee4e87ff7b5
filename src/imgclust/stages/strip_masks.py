"""Stage strip_masks: pass data/raw on to data/stripped without the segmentation mask files (files
linked, not copied). The report lists what each pattern removed, and the console warns about every
removed file that has no image beside it (``x_mask.png`` without ``x.png``): likely a real image."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import typer

from imgclust import config
from imgclust.core.fsutil import atomic_dir, class_folders, is_image_file, link_or_copy, write_json
from imgclust.errors import EmptyClassError, ParamError

# the keys of params.yaml this stage reads: its `params` in dvc.yaml, and all it may read
PARAMS = ("strip_masks",)
SHOWN_ALONE = 20  # mask-named files without an image that the console names one by one


def is_mask(name: str, patterns: list[str]) -> bool:
    return matching_pattern(name, patterns) is not None


def matching_pattern(name: str, patterns: list[str]) -> str | None:
    """The first of ``patterns`` (fnmatch, case-insensitive) that the file ``name`` matches, or None."""
    return next((pattern for pattern in patterns if fnmatch.fnmatchcase(name.lower(), pattern.lower())), None)


def _has_image_beside(mask: Path, image_stems: set[str]) -> bool:
    """Whether an image kept in the mask's folder is what the mask outlines: its stem followed by a
    separator starts the mask's stem (``x.png`` for ``x_mask.png`` or ``x_mask_1.png``)."""
    stem = mask.stem.lower()
    return any(stem[:i] in image_stems for i in range(1, len(stem)) if not stem[i].isalnum())


def strip_masks(raw_dir: Path, out_dir: Path, patterns: list[str]) -> dict:
    """Pass every image of ``raw_dir`` that matches none of the mask ``patterns`` (fnmatch, on the
    file name, case-insensitive) on to ``out_dir`` unchanged (linked or copied); ``raw_dir`` is only
    read. Returns counts, the files each pattern removed (a file under the first pattern it
    matches), and the removed files with no image beside them (``x_mask.png`` without ``x.png``):
    probably real images whose name happens to match, which the caller should warn about."""
    if not patterns:
        raise ParamError("strip_masks.patterns is empty; give at least one mask pattern such as '*_mask*.png'.")
    raw_dir = Path(raw_dir)
    kept: dict[str, int] = {}
    masks: dict[str, int] = {}
    removed: dict[str, list[str]] = {pattern: [] for pattern in patterns}
    alone: list[str] = []
    with atomic_dir(out_dir) as tmp:
        for folder in class_folders(raw_dir):
            n_kept = n_masks = 0
            folder_masks: list[Path] = []
            image_stems: dict[Path, set[str]] = {}  # folder -> stems (lower case) of the images kept there
            for path in sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p)):
                pattern = matching_pattern(path.name, patterns)
                if pattern is not None:
                    n_masks += 1
                    removed[pattern].append(path.relative_to(raw_dir).as_posix())
                    folder_masks.append(path)
                    continue
                target = tmp / path.relative_to(raw_dir)
                target.parent.mkdir(parents=True, exist_ok=True)
                link_or_copy(path, target)
                image_stems.setdefault(path.parent, set()).add(path.stem.lower())
                n_kept += 1
            alone += [
                mask.relative_to(raw_dir).as_posix()
                for mask in folder_masks
                if not _has_image_beside(mask, image_stems.get(mask.parent, set()))
            ]
            if not n_kept:
                raise EmptyClassError(
                    f"{folder}: no image left after removing masks ({n_masks} mask file(s) matched "
                    f"{patterns}). Check strip_masks.patterns or the class folder's content."
                )
            kept[folder.name], masks[folder.name] = n_kept, n_masks
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
