"""Packed datasets (``imgclust.core.packs``) from and to folders of files, for tests that build a
stage's input by hand or look at its output file by file."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from imgclust.core.fsutil import is_image_file
from imgclust.core.packs import Pack, export, write_pack


def _image_items(folder: Path) -> list[tuple[str, bytes]]:
    """(relative path, bytes) of the image files under ``folder``, sorted; other files (notes,
    hidden files) are left out, as ingest leaves them out."""
    folder = Path(folder)
    files = sorted(
        (p.relative_to(folder).as_posix(), p)
        for p in folder.rglob("*")
        if p.is_file() and is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    return [(rel, path.read_bytes()) for rel, path in files]


def pack_folder(folder: Path) -> Path:
    """Replace ``folder`` (class subfolders of image files) by a pack of its image files, as the
    stage before would have written it. Returns ``folder``."""
    folder = Path(folder)
    items = _image_items(folder)
    shutil.rmtree(folder)
    folder.mkdir()
    write_pack(folder, items)
    return folder


def pack_of(source: Path, pack_dir: Path) -> Path:
    """A pack ``pack_dir`` (made here) of the image files of ``source``, which stays as it is (a
    shared, read-only dataset). Returns ``pack_dir``."""
    pack_dir = Path(pack_dir)
    pack_dir.mkdir(parents=True)
    write_pack(pack_dir, _image_items(source))
    return pack_dir


def items(pack_dir: Path) -> dict[str, bytes]:
    """Every item of the pack ``pack_dir``: path -> bytes (each checked against its sha256)."""
    return dict(Pack(pack_dir).iter_items())


def unpacked(pack_dir: Path) -> Path:
    """The items of the pack ``pack_dir`` exported as files to a sibling folder ``<name>.files``
    (made afresh), to be looked at file by file."""
    pack_dir = Path(pack_dir)
    out = pack_dir.with_name(pack_dir.name + ".files")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    export(Pack(pack_dir), out)
    return out


def edited_copy(pack_dir: Path, dest: Path, edit: Callable[[Path], object]) -> Path:
    """A pack ``dest`` of the items of ``pack_dir`` after ``edit(folder)`` changed them as files
    (removed one, rewrote one...): the pack a stage would get from a changed previous stage."""
    dest = Path(dest)
    dest.mkdir(parents=True)
    export(Pack(pack_dir), dest)
    edit(dest)
    return pack_folder(dest)
