"""Snapshot a folder of class subfolders into data/raw, with a manifest of every file."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import typer

from imgclust.cliopts import bool_option
from imgclust.errors import CorruptImageError, EmptyClassError, SourceError
from imgclust.fsutil import atomic_dir, class_folders, is_image_file, sha256_file, write_csv, write_json
from imgclust.images import open_image
from imgclust.parallel import pmap

MANIFEST_FIELDS = ("path", "class", "width", "height", "mode", "sha256")


@dataclass
class IngestReport:
    images: dict[str, int] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    corrupt: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "files_per_class": self.images,
            "n_files": sum(self.images.values()),
            "n_ignored": len(self.ignored),
            "ignored": self.ignored,
            "n_corrupt_skipped": len(self.corrupt),
            "corrupt_skipped": self.corrupt,
        }


def scan_source(source: Path) -> tuple[dict[str, list[Path]], list[str]]:
    """Image files per class folder of ``source`` and the non-image files that are ignored.

    Symlinks are not followed, so nothing outside ``source`` is read through one.
    """
    source = Path(source)
    if not source.exists():
        raise SourceError(
            f"{source}: source folder not found. Set data.source in params.yaml to a folder "
            "of class subfolders (for example Dataset_BUSI_with_GT with benign/ malignant/ normal/)."
        )
    if not source.is_dir():
        raise SourceError(f"{source}: not a folder. data.source must name a folder of class subfolders.")
    classes = class_folders(source)
    ignored: list[str] = [p.name for p in source.iterdir() if p.is_symlink()]
    if not classes:
        raise SourceError(
            f"{source}: no class subfolders. Put each class's images in its own subfolder, "
            "e.g. source/benign/*.png, source/malignant/*.png."
        )
    files: dict[str, list[Path]] = {}
    for folder in classes:
        found = []
        # rglob does not descend into symlinked folders; list those links (and file links) as ignored
        for path in sorted(p for p in folder.rglob("*") if p.is_symlink() or not p.is_dir()):
            rel = path.relative_to(source).as_posix()
            if path.is_symlink() or not is_image_file(path):
                ignored.append(rel)
            else:
                found.append(path)
        if not found:
            raise EmptyClassError(
                f"{folder}: class folder holds no image. Add images or remove the folder from the source."
            )
        files[folder.name] = found
    return files, ignored


def _describe(path: Path, source: Path) -> dict:
    try:
        image = open_image(path)
    except CorruptImageError as exc:
        return {"path": path.relative_to(source).as_posix(), "error": str(exc.__cause__ or exc)}
    return {
        "path": path.relative_to(source).as_posix(),
        "class": path.relative_to(source).parts[0],
        "width": image.width,
        "height": image.height,
        "mode": image.mode,
        "sha256": sha256_file(path),
    }


def ingest(source: Path, raw_dir: Path, manifest_path: Path, *, skip_corrupt: bool = False,
           workers: int | None = None) -> IngestReport:
    """Copy every decodable image of ``source`` into ``raw_dir`` and write its manifest.

    Corrupt images fail the stage (listing every one) unless ``skip_corrupt``.
    """
    source = Path(source)
    files, ignored = scan_source(source)
    all_files = [path for paths in files.values() for path in paths]
    described = pmap(partial(_describe, source=source), all_files, desc="ingest", workers=workers)
    corrupt = [row for row in described if "error" in row]
    if corrupt and not skip_corrupt:
        listing = "\n".join(f"  {source / row['path']}: {row['error']}" for row in corrupt)
        raise CorruptImageError(
            f"{len(corrupt)} image(s) in {source} cannot be decoded:\n{listing}\n"
            "Remove or replace them, or set ingest.skip_corrupt: true to skip and list them.",
            [str(source / row["path"]) for row in corrupt],
        )
    rows = [row for row in described if "error" not in row]
    report = IngestReport(ignored=ignored, corrupt=corrupt)
    with atomic_dir(raw_dir) as tmp:
        for row in rows:
            target = tmp / row["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / row["path"], target)
            report.images[row["class"]] = report.images.get(row["class"], 0) + 1
    write_csv(manifest_path, rows, MANIFEST_FIELDS)
    return report


def command(
    source: Path = typer.Option(..., help="Folder of class subfolders (data.source)."),
    out: Path = typer.Option(Path("data/raw"), help="Raw snapshot folder."),
    manifest: Path = typer.Option(Path("data/manifests/raw.csv"), help="Manifest CSV to write."),
    report: Path = typer.Option(Path("reports/ingest.json"), help="Stage report (counts, ignored, skipped)."),
    skip_corrupt: str = bool_option(False, "--skip-corrupt", help="Skip undecodable images instead of failing."),
) -> None:
    result = ingest(source, out, manifest, skip_corrupt=skip_corrupt)
    write_json(report, result.to_dict())
    summary = result.to_dict()
    typer.echo(
        f"ingest: {summary['n_files']} files from {source} into {out} "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(result.images.items()))}); "
        f"{summary['n_ignored']} non-image file(s) ignored, {summary['n_corrupt_skipped']} corrupt skipped"
    )
