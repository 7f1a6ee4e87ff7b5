"""Predict clusters for image files or folders with a registered model or a run's model."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from imgclust.core.fsutil import is_image_file, write_csv, write_json
from imgclust.core.images import open_image
from imgclust.errors import CorruptImageError, InputDataError
from imgclust.tracking import store

OUTPUT_FIELDS = ("path", "cluster", "cluster_class", "error")


class Format(str, Enum):
    csv = "csv"
    json = "json"


def collect_images(inputs: list[Path], exclude: list[str]) -> list[Path]:
    """Image files named directly, or found recursively in folders (sorted), minus ``exclude`` globs."""
    import fnmatch

    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file() and is_image_file(p))
        elif item.exists():
            files.append(item)
        else:
            raise InputDataError(f"{item}: no such file or folder.")
    return [p for p in files if not any(fnmatch.fnmatchcase(p.name.lower(), pat.lower()) for pat in exclude)]


def predict(model_uri: str, images: list[Path], batch_size: int = 64) -> list[dict]:
    """One row per image: cluster id and the class most represented in it, or the decoding error.

    Each image is decoded first, so a bad file is reported instead of failing the whole batch.
    """
    import pandas as pd
    from tqdm import tqdm

    model = store.load_model(model_uri)
    classes = store.cluster_classes(store.model_run_id(model_uri))
    rows: list[dict] = []
    with tqdm(total=len(images), desc="predict", unit="img", disable=None, leave=False) as bar:
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            good = []
            for path in batch:
                try:
                    open_image(path)
                    good.append(path)
                except CorruptImageError as exc:
                    rows.append({"path": str(path), "cluster": None, "cluster_class": None, "error": str(exc)})
            if good:
                clusters = model.predict(pd.DataFrame({"path": [str(p) for p in good]}))
                rows += [{"path": str(p), "cluster": int(c), "cluster_class": classes.get(int(c)), "error": None}
                         for p, c in zip(good, clusters)]
            bar.update(len(batch))
    order = {str(p): i for i, p in enumerate(images)}
    return sorted(rows, key=lambda r: order[r["path"]])


def command(
    images: list[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively)."),
    model: str = typer.Option("models:/imgclust@champion", help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/image_model."),
    output: Path = typer.Option(..., "--output", "-o", help="File to write (.csv or .json)."),
    fmt: Format = typer.Option(None, "--format", help="csv or json (default: from the output suffix)."),
    exclude: list[str] = typer.Option(["*_mask*"], help="File-name patterns to skip (repeatable)."),
    batch_size: int = typer.Option(64, help="Images per model call."),
) -> None:
    store.configure()
    files = collect_images(images, exclude)
    if not files:
        raise InputDataError(f"no image file in {', '.join(map(str, images))}.")
    rows = predict(model, files, batch_size)
    fmt = fmt or (Format.json if output.suffix.lower() == ".json" else Format.csv)
    if fmt is Format.json:
        write_json(output, rows)
    else:
        write_csv(output, rows, OUTPUT_FIELDS)
    bad = [r for r in rows if r["error"]]
    typer.echo(f"predict: {len(rows) - len(bad)} image(s) clustered, {len(bad)} unreadable -> {output}")
    for row in bad:
        typer.secho(f"  {row['error']}", err=True, fg=typer.colors.YELLOW)
    if len(bad) == len(rows):
        raise typer.Exit(code=2)
