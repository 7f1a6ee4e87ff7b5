"""Stratified train/test split of the original (resized) images, written as a CSV listing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer

from imgclust.errors import InputDataError, ParamError
from imgclust.fsutil import class_folders, is_image_file, write_csv

SPLIT_FIELDS = ("path", "class", "split")


def list_images(image_dir: Path) -> list[tuple[str, str]]:
    """(relative path, class) of every image under ``image_dir``'s class folders, sorted."""
    image_dir = Path(image_dir)
    return [(p.relative_to(image_dir).as_posix(), folder.name)
            for folder in class_folders(image_dir)
            for p in sorted(folder.rglob("*")) if p.is_file() and is_image_file(p)]


def split_rows(items: list[tuple[str, str]], test_size: float, seed: int, stratify: bool = True) -> list[dict]:
    """Assign each (path, class) to train or test; stratified by class unless told otherwise."""
    from sklearn.model_selection import train_test_split

    if not 0 <= test_size < 1:
        raise ParamError(f"split.test_size must be in [0, 1), got {test_size}.")
    if test_size == 0:
        return [{"path": p, "class": c, "split": "train"} for p, c in items]
    if not items:
        raise InputDataError("no image to split; check the resize stage's output folder.")
    labels = [c for _, c in items]
    if stratify:
        n_test = int(-(-test_size * len(items) // 1))  # sklearn rounds the test share up
        smallest = min(Counter(labels).values())
        n_classes = len(set(labels))
        if smallest < 2 or n_test < n_classes or len(items) - n_test < n_classes:
            raise ParamError(
                f"cannot stratify {len(items)} images over {len(set(labels))} classes with "
                f"split.test_size={test_size} (smallest class: {smallest}); raise test_size or add images."
            )
    train_idx, _ = train_test_split(range(len(items)), test_size=test_size, random_state=seed,
                                    stratify=labels if stratify else None)
    train = set(train_idx)
    return [{"path": p, "class": c, "split": "train" if i in train else "test"}
            for i, (p, c) in enumerate(items)]


def command(
    src: Path = typer.Option(Path("data/resized"), "--in", help="Folder of class subfolders to split."),
    out: Path = typer.Option(Path("data/manifests/split.csv"), help="CSV to write (path, class, split)."),
    test_size: float = typer.Option(0.1, help="Fraction of images held out for testing."),
    seed: int = typer.Option(0, help="Random seed of the split."),
) -> None:
    rows = split_rows(list_images(src), test_size, seed)
    write_csv(out, rows, SPLIT_FIELDS)
    counts = Counter((r["split"], r["class"]) for r in rows)
    typer.echo("split: " + ", ".join(f"{s}/{c}: {n}" for (s, c), n in sorted(counts.items())))
