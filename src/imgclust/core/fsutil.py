"""Atomic outputs, manifests and hashing shared by the stages."""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
# the longest file name (bytes) most file systems allow (ext4, xfs, btrfs, tmpfs, APFS, NTFS)
NAME_MAX = 255
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the quota) is full."""
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL


def write_error(exc: BaseException, where: Path):
    """The OutputWriteError telling what ``exc`` (an OSError raised while writing ``where``) means,
    or None when it is not a full disk or a too-long file name."""
    from imgclust.errors import OutputWriteError

    if not isinstance(exc, OSError):
        return None
    name = exc.filename or where
    if disk_full(exc):
        return OutputWriteError(
            f"{name}: {exc.strerror or exc}: the disk (or quota) is full while writing "
            f"{where}; nothing was kept. Free space and rerun."
        )
    if exc.errno == errno.ENAMETOOLONG:
        return OutputWriteError(
            f"{name}: file name too long for the file system (at most {NAME_MAX} bytes per "
            f"name) while writing {where}; nothing was kept. Rename the source file."
        )
    return None


def long_names(rel_paths: Iterable[str], extra: int = 0) -> list[str]:
    """The relative paths among ``rel_paths`` with a component longer than NAME_MAX - ``extra``
    bytes (UTF-8): the longest a name may be when a stage adds ``extra`` bytes to it."""
    limit = NAME_MAX - extra
    return [
        rel
        for rel in rel_paths
        if any(len(part.encode("utf-8", "surrogateescape")) > limit for part in Path(rel).parts)
    ]


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_stale_tmp_siblings(path: Path) -> None:
    """Remove ``.name.tmp-PID`` siblings of ``path`` left by killed runs (PID no longer alive).

    A live PID's sibling is kept: that run may still be writing it.
    """
    prefix = f".{path.name}.tmp-"
    for sibling in path.parent.iterdir():
        pid = sibling.name[len(prefix) :]
        if sibling.name.startswith(prefix) and pid.isdigit() and not _pid_alive(int(pid)):
            _remove(sibling)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces ``path`` only if the block succeeds.

    An interrupted stage leaves a hidden ``.name.tmp-PID`` folder, never a half-written ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp_siblings(path)
    tmp = _tmp_sibling(path)
    _remove(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException as exc:
        _remove(tmp)
        if (error := write_error(exc, path)) is not None:
            raise error from exc
        raise
    _remove(path)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling file path that is renamed onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp_siblings(path)
    tmp = _tmp_sibling(path)
    _remove(tmp)
    try:
        yield tmp
    except BaseException as exc:
        _remove(tmp)
        if (error := write_error(exc, path)) is not None:
            raise error from exc
        raise
    os.replace(tmp, path)


def write_csv(path: Path, rows: Iterable[dict], fieldnames: Sequence[str]) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fieldnames))
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path, required: Sequence[str] = ()) -> list[dict]:
    """Rows of a CSV manifest; ``required`` columns must be present."""
    from imgclust.errors import InputDataError

    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"{path}: file not found; run the stage that writes it (dvc repro).")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [name for name in required if name not in (reader.fieldnames or [])]
        if missing:
            raise InputDataError(f"{path}: missing column(s) {missing}; rerun the stage that writes it (dvc repro).")
        return list(reader)


def read_image_listing(listing: Path, image_dir: Path, required: Sequence[str], producer: str) -> list[dict]:
    """Rows of a manifest whose ``path`` column names items of the pack ``image_dir``; refuses an
    empty listing or one naming missing items, telling to rerun ``producer`` (the stage that writes it)."""
    from imgclust.core.packs import open_pack
    from imgclust.errors import InputDataError

    rows = read_csv(listing, required=required)
    if not rows:
        raise InputDataError(f"{listing}: lists no image; rerun the {producer} stage.")
    pack = open_pack(image_dir)
    missing = [row["path"] for row in rows if row["path"] not in pack]
    if missing:
        raise InputDataError(
            f"{len(missing)} image(s) listed in {listing} are missing in {image_dir}, "
            f"e.g. {missing[0]}; rerun the {producer} stage (dvc repro {producer})."
        )
    return rows


def write_json(path: Path, data) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def class_folders(root: Path) -> list[Path]:
    """The visible subfolders of ``root``, sorted by name: one per class. Symlinked folders are
    not classes: nothing outside ``root`` is read through a link."""
    from imgclust.errors import InputDataError

    root = Path(root)
    if not root.is_dir():
        raise InputDataError(f"{root}: folder not found; run the stage that writes it (dvc repro).")
    try:
        return sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))
    except OSError as exc:
        raise InputDataError(f"{root}: cannot be listed ({exc.strerror or exc}); check its permissions.") from exc


_FILE_KINDS = (
    (stat.S_ISLNK, "symbolic link"),
    (stat.S_ISDIR, "folder"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)
NOT_REGULAR = "not a regular file: not opened"


def file_kind(mode: int) -> str:
    """``regular file`` or what else a ``stat``/``lstat`` mode says the entry is (FIFO, socket, ...):
    only regular files are ever opened (a FIFO blocks its reader, a device may act on being opened)."""
    if stat.S_ISREG(mode):
        return "regular file"
    return next((name for test, name in _FILE_KINDS if test(mode)), "special file")


def not_regular_reason(kind: str) -> str:
    return f"{kind}, {NOT_REGULAR}"
