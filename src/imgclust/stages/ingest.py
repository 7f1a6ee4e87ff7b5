"""Stage ingest: snapshot ``data.source`` (a folder of class subfolders, or an archive of one) into
data/raw, a pack of its files (``core.packs``), with a manifest of every file and a report."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import typer
from PIL import Image

from imgclust import config
from imgclust.core.archives import Limits, source_folder
from imgclust.core.fsutil import (
    NOT_REGULAR,
    atomic_dir,
    class_folders,
    file_kind,
    is_image_file,
    not_regular_reason,
    write_csv,
    write_json,
)
from imgclust.core.images import check_image
from imgclust.core.item_cache import NO_CACHE, ItemCache
from imgclust.core.packs import PackWriter
from imgclust.core.parallel import pmap_each
from imgclust.errors import CorruptImageError, EmptyClassError, SourceError

# the keys of params.yaml this stage reads: its `params` in dvc.yaml, and all it may read
PARAMS = ("data", "ingest")

MANIFEST_FIELDS = ("path", "class", "width", "height", "mode", "sha256")


@dataclass
class IngestReport:
    images: dict[str, int] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    ignored_reasons: dict[str, str] = field(default_factory=dict)  # ignored path -> why
    corrupt: list[dict] = field(default_factory=list)
    duplicates_across_classes: list[dict] = field(default_factory=list)
    source: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "files_per_class": self.images,
            "n_files": sum(self.images.values()),
            "n_ignored": len(self.ignored),
            "ignored": self.ignored,
            "ignored_reasons": self.ignored_reasons,
            "n_corrupt_skipped": len(self.corrupt),
            "corrupt_skipped": self.corrupt,
            "n_duplicates_across_classes": len(self.duplicates_across_classes),
            "duplicates_across_classes": self.duplicates_across_classes,
        }


def duplicates_across_classes(rows: list[dict]) -> list[dict]:
    """Groups of byte-identical files (same sha256) found in more than one class: the same image
    with two labels, which no clustering can score right (and which may leak across the split)."""
    paths_by_hash: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        paths_by_hash[row["sha256"]].append(row["path"])
    return [
        {"sha256": digest, "paths": sorted(paths)}
        for digest, paths in sorted(paths_by_hash.items())
        if len({path.split("/", 1)[0] for path in paths}) > 1
    ]


# what is not a regular file, by its lstat mode; such an entry is never opened (a FIFO would block
# the reader forever, a device may act on being opened)
LINK_REASON = "symbolic link, not followed"
NOT_IMAGE_REASON = "not an image file (by its suffix)"
HIDDEN_REASON = "hidden file"
OUTSIDE_CLASSES_REASON = "not in a class folder"


def _entry_reason(path: Path) -> str | None:
    """Why a non-folder entry of a class folder is ignored, or None for an image file to read.
    Decided on ``lstat`` alone: nothing is opened here."""
    try:
        mode = os.lstat(path).st_mode
    except OSError as exc:
        return f"cannot be examined ({exc.strerror or exc})"
    if stat.S_ISLNK(mode):
        return LINK_REASON
    if not stat.S_ISREG(mode):
        return not_regular_reason(file_kind(mode))
    if is_image_file(path):
        return None
    return HIDDEN_REASON if path.name.startswith(".") else NOT_IMAGE_REASON


def survey_source(source: Path) -> tuple[dict[str, list[Path]], dict[str, str]]:
    """Image files per class folder of ``source``, and each ignored entry (relative path) with the
    reason it is ignored: not an image, a symbolic link (never followed, so nothing outside
    ``source`` is read through one), or not a regular file (a FIFO, socket or device: never opened).
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
    # files beside the class folders (README, LICENSE, a stray image) and links are not data
    ignored: dict[str, str] = {}
    for entry in sorted(source.iterdir()):
        mode = os.lstat(entry).st_mode
        if stat.S_ISLNK(mode):
            ignored[entry.name] = LINK_REASON
        elif stat.S_ISREG(mode):
            ignored[entry.name] = OUTSIDE_CLASSES_REASON
        elif not stat.S_ISDIR(mode):
            ignored[entry.name] = not_regular_reason(file_kind(mode))
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
            reason = _entry_reason(path)
            if reason is None:
                found.append(path)
            else:
                ignored[path.relative_to(source).as_posix()] = reason
        if not found:
            raise EmptyClassError(
                f"{folder}: class folder holds no image. Add images or remove the folder from the source."
            )
        files[folder.name] = found
    return files, ignored


def scan_source(source: Path) -> tuple[dict[str, list[Path]], list[str]]:
    """Image files per class folder of ``source`` and the entries that are ignored (see ``survey_source``).

    Symlinks are not followed, so nothing outside ``source`` is read through one; FIFOs, sockets
    and devices are never opened.
    """
    files, ignored = survey_source(source)
    return files, list(ignored)


def _read_regular_file(path: Path) -> bytes:
    """The bytes of ``path``, which must still be a regular file (not a link, FIFO or device)."""
    if not stat.S_ISREG(mode := os.lstat(path).st_mode):
        raise OSError(not_regular_reason(file_kind(mode)))
    # O_NONBLOCK|O_NOFOLLOW: should the entry have been swapped since, opening it cannot block or follow
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(mode := os.fstat(fh.fileno()).st_mode):
            raise OSError(f"{file_kind(mode)}, not a regular file: not read")
        return fh.read()


def _rel(path: Path, source: Path) -> str:
    return path.relative_to(source).as_posix()


def _check_one(path: Path, source: Path, cache) -> dict:
    """Read ``path`` once: hash it and check that it is an intact image (a check already passed by
    the same bytes is read from ``cache``). Returns its manifest row (with ``cache_entry``, the
    new check for the caller to store, when it was not in the cache), or ``{"path", "error"}`` for
    a file that does not decode."""
    rel = _rel(path, source)
    try:
        data = _read_regular_file(path)
    except OSError as exc:  # replaced or removed since the scan
        return {"path": rel, "error": f"unreadable: {exc.strerror or exc}"}
    digest = hashlib.sha256(data).hexdigest()
    key = cache.key(digest, path.suffix.lower())  # the suffix is part of the check (is_image_file)
    if (cached := cache.get(key)) is not None:
        width, height, mode = json.loads(cached)
    else:
        try:
            # Pillow only warns between its pixel limit and twice that; refuse those images too
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                width, height, mode = check_image(path, data)
        except CorruptImageError as exc:
            return {"path": rel, "error": str(exc.__cause__ or exc)}
        except Image.DecompressionBombWarning as exc:
            return {"path": rel, "error": f"refused: {exc}"}
        entry = (key, json.dumps([width, height, mode]).encode())  # for the caller to store
    return {
        **({"cache_entry": entry} if cached is None else {}),
        "path": rel,
        "class": rel.split("/", 1)[0],
        "width": width,
        "height": height,
        "mode": mode,
        "sha256": digest,
    }


def _checked_bytes(source: Path, row: dict) -> tuple[str, bytes, str]:
    """The bytes of a checked file, read again to be packed, with their sha256: refused if they
    changed since."""
    data = _read_regular_file(source / row["path"])
    if hashlib.sha256(data).hexdigest() != row["sha256"]:
        raise SourceError(
            f"{source / row['path']}: changed while it was ingested; rerun ingest when the source is still."
        )
    return row["path"], data, row["sha256"]


def ingest(
    source: Path | str,
    raw_dir: Path,
    manifest_path: Path,
    *,
    skip_corrupt: bool = False,
    workers: int | None = None,
    sha256: str = "",
    limits: Limits = Limits(),
    cache: ItemCache = NO_CACHE,
) -> IngestReport:
    """Snapshot every intact image of ``source`` into ``raw_dir`` and write its manifest.

    ``source`` is a folder of class subfolders, or a .zip/.tar.gz/.tgz of one (a local path or an
    http(s) URL), verified against ``sha256`` before extraction (required for URLs).
    Corrupt images fail the stage (listing every one) unless ``skip_corrupt``. ``limits`` bound what
    an archive may unpack to. ``cache`` keeps the image checks of files already seen.
    """
    with source_folder(source, sha256, limits) as resolved:
        report = _ingest_folder(
            resolved.folder,
            raw_dir,
            manifest_path,
            skip_corrupt=skip_corrupt,
            workers=workers,
            label=None if resolved.archive_sha256 is None else str(source),
            cache=cache,
        )
    report.source = {"source": str(source), "archive_sha256": resolved.archive_sha256}
    return report


def _ingest_folder(
    source: Path,
    raw_dir: Path,
    manifest_path: Path,
    *,
    skip_corrupt: bool,
    workers: int | None,
    label: str | None,
    cache: ItemCache,
) -> IngestReport:
    """``label``: how messages name an archive's files (``archive:member``); None for a folder."""
    files, ignored = survey_source(source)
    # in the pack's order (by path string), so that each file is packed as soon as it is checked
    all_files = sorted((path for paths in files.values() for path in paths), key=lambda p: _rel(p, source))
    rows, corrupt = [], []
    # the workers check; this process alone writes the cache, and packs each intact file meanwhile
    # (a pack with a corrupt file left out is discarded below unless skip_corrupt)
    with atomic_dir(raw_dir) as tmp, PackWriter(tmp) as pack:
        for row in pmap_each(
            partial(_check_one, source=source, cache=cache), all_files, desc="ingest", unit="file", workers=workers
        ):
            if "cache_entry" in row:
                cache.put(*row.pop("cache_entry"))
            if "error" in row:
                corrupt.append(row)
                continue
            pack.add(*_checked_bytes(source, row))
            rows.append(row)
        if corrupt and not skip_corrupt:
            named = [f"{label}:{row['path']}" if label else str(source / row["path"]) for row in corrupt]
            listing = "\n".join(f"  {name}: {row['error']}" for name, row in zip(named, corrupt))
            raise CorruptImageError(
                f"{len(corrupt)} image(s) in {label or source} cannot be decoded:\n{listing}\n"
                "Remove or replace them, or set ingest.skip_corrupt: true to skip and list them.",
                named,
            )
    report = IngestReport(
        ignored=list(ignored),
        ignored_reasons=ignored,
        corrupt=corrupt,
        duplicates_across_classes=duplicates_across_classes(rows),
    )
    for row in rows:
        report.images[row["class"]] = report.images.get(row["class"], 0) + 1
    write_csv(manifest_path, rows, MANIFEST_FIELDS)
    return report


def run(out: Path, manifest: Path, report: Path, data: config.DataParams, params: config.IngestParams) -> IngestReport:
    result = ingest(
        data.source,
        out,
        manifest,
        skip_corrupt=params.skip_corrupt,
        sha256=data.sha256,
        limits=Limits(params.max_archive_bytes, params.max_compression_ratio),
        cache=config.item_cache("ingest", __file__, {}),
    )
    write_json(report, result.to_dict())
    return result


def command(
    out: Path = typer.Option(..., help="Raw snapshot folder."),
    manifest: Path = typer.Option(..., help="Manifest CSV to write."),
    report: Path = typer.Option(..., help="Stage report (counts, ignored, skipped)."),
) -> None:
    params = config.load(PARAMS)
    result = run(out, manifest, report, params.data, params.ingest)
    summary = result.to_dict()
    typer.echo(
        f"ingest: {summary['n_files']} files from {params.data.source} into {out} "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(result.images.items()))}); "
        f"{summary['n_ignored']} non-image file(s) ignored, {summary['n_corrupt_skipped']} corrupt skipped, "
        f"{summary['n_duplicates_across_classes']} duplicate(s) across classes"
    )
    for path, reason in result.ignored_reasons.items():
        if reason.endswith(NOT_REGULAR):
            typer.secho(f"warning: {params.data.source}/{path} ignored: {reason}", err=True, fg=typer.colors.YELLOW)
    for group in result.duplicates_across_classes:
        typer.secho(
            f"warning: identical files in different classes: {', '.join(group['paths'])}",
            err=True,
            fg=typer.colors.YELLOW,
        )
