"""Packed image datasets: a folder of a few uncompressed tar shards and an index, instead of one file
per image.

DVC spends about half a millisecond of bookkeeping on every file of an output (hashing, state, cache
links), which at 20,000 images and four datasets costs more than all the image work. A pack holds
the same bytes in ``part-*.tar`` shards of about ``SHARD_ITEMS`` images each, listed in
``index.csv`` (path, shard, byte offset, size, sha256), so DVC tracks a few dozen files per dataset.

- **Standard:** every shard is a plain POSIX tar: ``tar -xf part-*.tar`` (or ``imgclust export``)
  gives back the images under their paths.
- **Deterministic:** items are written sorted by path, with fixed tar metadata, so the same images
  give byte-identical shards.
- **Local changes stay local:** a shard ends before an item whose path hash is a multiple of
  ``SHARD_ITEMS`` (content-defined boundaries), not after a fixed count. Adding or removing an image
  rewrites only its own shard, so DVC stores and pushes about that share of the data again.
- **Checked on read:** every item is verified against its sha256 and every index row against its
  shard, so a truncated or altered pack fails with the path to rebuild, never a wrong image.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from imgclust.errors import InputDataError, OutputCollisionError

INDEX = "index.csv"
INDEX_FIELDS = ("path", "shard", "offset", "size", "sha256")
SHARD_ITEMS = 256  # mean images per shard: 20,000 images make about 80 shards
SHARD_NAME = re.compile(r"part-[0-9a-f]{16}\.tar")
BLOCK = tarfile.BLOCKSIZE


def is_pack(folder: Path) -> bool:
    return (Path(folder) / INDEX).is_file()


def _path_hash(path: str) -> int:
    return int.from_bytes(hashlib.sha256(path.encode("utf-8", "surrogateescape")).digest()[:8], "big")


def starts_shard(path: str) -> bool:
    """Whether ``path`` begins a new shard (except as the first item): about one path in SHARD_ITEMS."""
    return _path_hash(path) % SHARD_ITEMS == 0


def shard_name(first_path: str) -> str:
    """A shard is named after its first item, so shards that do not change keep their names."""
    return f"part-{_path_hash(first_path):016x}.tar"


def check_item_path(path: str, where: object = "", fix: str = "rebuild the pack") -> str:
    """``path`` if it is a safe relative POSIX path (class/…/name), else InputDataError: an index
    or a name from a hostile dataset must not reach outside the folder it is exported to. A
    backslash is part of a name on POSIX (a class may be called ``$\\bad$ lesion``), but one that
    starts the path or makes a ``..`` part would lead outside where it is a separator (Windows)."""
    parts = path.split("/")  # plain string work: it runs for every row of every index read
    if (
        len(parts) < 2
        or any(part in ("", ".", "..") for part in parts)  # also a leading, trailing or doubled "/"
        or path.startswith("\\")
        or ".." in path.replace("\\", "/").split("/")
        or "\0" in path
    ):
        raise InputDataError(f"{where}: {path!r} is not a relative path of the form class/name; {fix}.")
    return path


def _tar_header(path: str, size: int) -> bytes:
    info = tarfile.TarInfo(path)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class PackWriter:
    """Writes a pack into ``folder`` (which the caller creates, e.g. through ``atomic_dir``).

    Items must come sorted by path and each path once: the shard boundaries depend on that order.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.rows: list[dict] = []
        self._shard: io.BufferedWriter | None = None
        self._shard_name = ""
        self._offset = 0

    def add(self, path: str, data: bytes, sha256: str | None = None) -> None:
        """Append the item ``path``; ``sha256``: the digest of ``data`` when the caller has just
        verified or computed it (an item passed on from another pack), so it is not hashed twice."""
        check_item_path(path, self.folder)
        if self.rows and path <= self.rows[-1]["path"]:
            if path == self.rows[-1]["path"]:
                raise OutputCollisionError(f"{self.folder}: two items are both named {path!r}; rename one of them.")
            raise ValueError(f"pack items must be added sorted by path: {path!r} after {self.rows[-1]['path']!r}")
        if self._shard is None or starts_shard(path):
            self._start_shard(path)
        header = _tar_header(path, len(data))
        self._shard.write(header)
        self._shard.write(data)
        self._shard.write(b"\0" * (-len(data) % BLOCK))
        self.rows.append(
            {
                "path": path,
                "shard": self._shard_name,
                "offset": self._offset + len(header),
                "size": len(data),
                "sha256": sha256 or hashlib.sha256(data).hexdigest(),
            }
        )
        self._offset += len(header) + len(data) + (-len(data) % BLOCK)

    def _start_shard(self, first_path: str) -> None:
        self._end_shard()
        self._shard_name = shard_name(first_path)
        self._shard = open(self.folder / self._shard_name, "xb")
        self._offset = 0

    def _end_shard(self) -> None:
        if self._shard is not None:
            self._shard.write(b"\0" * (2 * BLOCK))  # the end-of-archive marker
            self._shard.close()
            self._shard = None

    def close(self) -> list[dict]:
        """End the last shard and write the index; return its rows."""
        self._end_shard()
        with open(self.folder / INDEX, "x", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=INDEX_FIELDS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.rows)
        return self.rows

    def __enter__(self) -> PackWriter:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        elif self._shard is not None:
            self._shard.close()


def write_pack(folder: Path, items: Iterable[tuple]) -> list[dict]:
    """Write ``items`` ((path, bytes) or (path, bytes, their sha256), sorted by path) as a pack
    into the existing ``folder``."""
    with PackWriter(folder) as writer:
        for item in items:
            writer.add(*item)
    return writer.rows


class Pack:
    """A pack, read: its index checked against its shards (names, sizes, bounds) on opening, each
    item against its sha256 when read. ``producer`` names the stage to rerun in messages."""

    def __init__(self, folder: Path, producer: str = ""):
        self.folder = Path(folder)
        self.producer = producer
        rerun = f"rerun the {producer} stage (dvc repro {producer})" if producer else "rebuild it (dvc repro)"
        self._rerun = rerun
        index = self.folder / INDEX
        if not index.is_file():
            what = "a folder of image files, not a pack" if self.folder.is_dir() else "not found"
            raise InputDataError(f"{self.folder}: {what} (no {INDEX}); {rerun}.")
        try:
            with open(index, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                if tuple(reader.fieldnames or ()) != INDEX_FIELDS:
                    raise InputDataError(f"{index}: columns {reader.fieldnames} are not {list(INDEX_FIELDS)}; {rerun}.")
                rows = list(reader)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise InputDataError(f"{index}: cannot be read ({exc}); {rerun}.") from exc
        sizes: dict[str, int] = {}
        self._rows: dict[str, tuple[str, int, int, str]] = {}
        for row in rows:
            path, shard = check_item_path(row["path"], index, rerun), row["shard"]
            if not SHARD_NAME.fullmatch(shard):
                raise InputDataError(f"{index}: {shard!r} is not a shard name; {rerun}.")
            if shard not in sizes:
                shard_file = self.folder / shard
                if not shard_file.is_file() or shard_file.is_symlink():
                    raise InputDataError(f"{shard_file}: missing (listed in {index}); {rerun}.")
                sizes[shard] = shard_file.stat().st_size
            try:
                offset, size = int(row["offset"]), int(row["size"])
            except ValueError:
                raise InputDataError(f"{index}: bad offset or size for {path!r}; {rerun}.") from None
            if offset < 0 or size < 0 or offset + size > sizes[shard]:
                raise InputDataError(f"{index}: {path!r} lies outside {shard}; {rerun}.")
            if path in self._rows:
                raise InputDataError(f"{index}: {path!r} is listed twice; {rerun}.")
            self._rows[path] = (shard, offset, size, row["sha256"])

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, path: object) -> bool:
        return path in self._rows

    def paths(self) -> list[str]:
        """Every item's path, sorted."""
        return sorted(self._rows)

    def sha256(self, path: str) -> str:
        return self._rows[path][3]

    def size(self, path: str) -> int:
        return self._rows[path][2]

    def name(self, path: str) -> Path:
        """How messages name an item: as if the pack were a folder of its files."""
        return self.folder / path

    def read(self, path: str) -> bytes:
        """The bytes of item ``path``, verified against its sha256."""
        try:
            shard, offset, size, digest = self._rows[path]
        except KeyError:
            raise InputDataError(f"{self.name(path)}: not in the pack {self.folder}; {self._rerun}.") from None
        with open(self.folder / shard, "rb") as fh:
            fh.seek(offset)
            data = fh.read(size)
        return self._verified(path, data, digest)

    def _verified(self, path: str, data: bytes, digest: str) -> bytes:
        if hashlib.sha256(data).hexdigest() != digest:
            raise InputDataError(
                f"{self.name(path)}: its bytes in {self.folder} do not match the index (a damaged or altered "
                f"pack); {self._rerun}, or restore it with dvc checkout."
            )
        return data

    def iter_items(self, paths: Iterable[str] | None = None) -> Iterator[tuple[str, bytes]]:
        """(path, bytes) of ``paths`` (default: all, sorted), each verified."""
        for path, data, _ in self.iter_verified(paths):
            yield path, data

    def iter_verified(self, paths: Iterable[str] | None = None) -> Iterator[tuple[str, bytes, str]]:
        """(path, bytes, sha256) of ``paths`` (default: all, sorted), each verified: what
        ``write_pack`` takes to pass items on to another pack without hashing them again."""
        for path in self.paths() if paths is None else paths:
            yield path, self.read(path), self.sha256(path)


_OPENED: dict[tuple, Pack] = {}


def open_pack(folder: Path, producer: str = "") -> Pack:
    """``Pack(folder)``, parsed once per process for as long as its index file is unchanged (the
    workers of a pool read many items of one pack)."""
    folder = Path(folder).resolve()
    try:
        stat = (folder / INDEX).stat()
        key = (folder, producer, stat.st_ino, stat.st_mtime_ns, stat.st_size)
    except OSError:
        return Pack(folder, producer)
    if key not in _OPENED:
        if len(_OPENED) >= 4:  # a stage reads one or two packs: keep a few, not every one ever opened
            _OPENED.clear()
        _OPENED[key] = Pack(folder, producer)
    return _OPENED[key]


def read_named(folder: str, name: str) -> bytes:
    """The bytes of the item that ``Pack.name`` calls ``name`` in the pack ``folder`` (a picklable
    reader for worker processes, which open the pack once each)."""
    pack = open_pack(Path(folder))
    return pack.read(Path(name).relative_to(pack.folder).as_posix())


def export(pack: Pack, out_dir: Path, paths: Iterable[str] | None = None) -> int:
    """Write items of ``pack`` (default: all) as files under ``out_dir``, which must not hold them
    yet (nothing is overwritten); return how many were written."""
    out_dir = Path(out_dir)
    count = 0
    for path, data in pack.iter_items(paths):
        target = out_dir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(target, "xb") as fh:
                fh.write(data)
        except FileExistsError:
            raise OutputCollisionError(f"{target}: already exists; export into an empty folder.") from None
        count += 1
    return count
