"""Stage strip_masks: pass data/raw on to data/stripped without the segmentation mask files (files
linked, not copied)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import typer

from imgclust import config
from imgclust.core.fsutil import atomic_dir, class_folders, is_image_file, link_or_copy, write_json
from imgclust.errors import EmptyClassError, ParamError

# the keys of params.yaml this stage reads: its `params` in dvc.yaml, and all it may read
PARAMS = ("strip_masks",)


def is_mask(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name.lower(), pattern.lower()) for pattern in patterns)


def strip_masks(raw_dir: Path, out_dir: Path, patterns: list[str]) -> dict:
    """Pass every image of ``raw_dir`` that matches none of the mask ``patterns`` (fnmatch, on the
    file name, case-insensitive) on to ``out_dir`` unchanged (linked or copied); ``raw_dir`` is only
    read. Returns counts."""
    if not patterns:
        raise ParamError("strip_masks.patterns is empty; give at least one mask pattern such as '*_mask*.png'.")
    raw_dir = Path(raw_dir)
    kept: dict[str, int] = {}
    masks: dict[str, int] = {}
    with atomic_dir(out_dir) as tmp:
        for folder in class_folders(raw_dir):
            n_kept = n_masks = 0
            for path in sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p)):
                if is_mask(path.name, patterns):
                    n_masks += 1
                    continue
                target = tmp / path.relative_to(raw_dir)
                target.parent.mkdir(parents=True, exist_ok=True)
                link_or_copy(path, target)
                n_kept += 1
            if not n_kept:
                raise EmptyClassError(
                    f"{folder}: no image left after removing masks ({n_masks} mask file(s) matched "
                    f"{patterns}). Check strip_masks.patterns or the class folder's content."
                )
            kept[folder.name], masks[folder.name] = n_kept, n_masks
    return {"images_per_class": kept, "masks_per_class": masks,
            "n_images": sum(kept.values()), "n_masks": sum(masks.values())}


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
    typer.echo(f"strip-masks: kept {result['n_images']} images, removed {result['n_masks']} masks -> {out}")
