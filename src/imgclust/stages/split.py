"""Stage split: stratified train/test split of the original (resized) images, as a CSV listing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer

from imgclust import config
from imgclust.core.fsutil import write_csv
from imgclust.core.protocols import SPLIT_FIELDS, list_images, split_rows

# the keys of params.yaml this stage reads: its `params` in dvc.yaml, and all it may read
PARAMS = ("split",)


def run(src: Path, out: Path, params: config.SplitParams) -> list[dict]:
    rows = split_rows(list_images(src), params.test_size, params.seed)
    write_csv(out, rows, SPLIT_FIELDS)
    return rows


def command(
    src: Path = typer.Option(..., "--in", help="Folder of class subfolders to split."),
    out: Path = typer.Option(..., help="CSV to write (path, class, split)."),
) -> None:
    rows = run(src, out, config.load(PARAMS).split)
    counts = Counter((r["split"], r["class"]) for r in rows)
    typer.echo("split: " + ", ".join(f"{s}/{c}: {n}" for (s, c), n in sorted(counts.items())))
