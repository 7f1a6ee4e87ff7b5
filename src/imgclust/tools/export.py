"""imgclust export: the images of a packed dataset (data/raw, stripped, resized, augmented) as
files in a new folder, to look at them or to hand them to another tool."""

from __future__ import annotations

from pathlib import Path

import typer

from imgclust.core.fsutil import atomic_dir
from imgclust.core.packs import Pack, export
from imgclust.errors import InputDataError, OutputCollisionError


def export_images(pack_dir: Path, out: Path, classes: list[str] = (), per_class: int = 0) -> dict[str, int]:
    """Write the items of the pack ``pack_dir`` (of ``classes`` only, if given; at most
    ``per_class`` of each class, if not 0) as files under ``out``, which must not exist. Returns
    how many images each class gave."""
    pack, out = Pack(pack_dir), Path(out)
    if out.exists():
        raise OutputCollisionError(f"{out}: already exists; export into a new folder (nothing is overwritten).")
    chosen: dict[str, list[str]] = {}
    for path in pack.paths():
        cls = path.split("/", 1)[0]
        if (not classes or cls in classes) and (not per_class or len(chosen.get(cls, [])) < per_class):
            chosen.setdefault(cls, []).append(path)
    missing = sorted(set(classes) - set(chosen))
    if missing:
        known = sorted({path.split("/", 1)[0] for path in pack.paths()})
        raise InputDataError(f"{pack_dir}: no class {', '.join(missing)}; its classes are {', '.join(known)}.")
    with atomic_dir(out) as tmp:
        export(pack, tmp, [path for paths in chosen.values() for path in paths])
    return {cls: len(paths) for cls, paths in chosen.items()}


def command(
    pack: Path = typer.Argument(..., help="A packed dataset: data/raw, data/stripped, data/resized or data/augmented."),
    out: Path = typer.Option(..., "--out", "-o", help="New folder to write the images to (must not exist)."),
    classes: list[str] = typer.Option([], "--class", help="Only this class (repeatable)."),
    per_class: int = typer.Option(0, "--per-class", min=0, help="At most this many images of each class (0: all)."),
) -> None:
    counts = export_images(pack, out, classes, per_class)
    typer.echo(
        f"export: {sum(counts.values())} images of {pack} -> {out} ({', '.join(f'{k}: {v}' for k, v in counts.items())})"
    )
