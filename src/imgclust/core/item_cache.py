"""A content-addressed cache of per-image results, so that a stage computes only the images it has
not seen (DVC reruns a stage on all of its inputs whenever one of them changes).

An entry's key is the sha256 of the stage's *version* (its parameters, the digest of the code it
runs and the versions of the libraries that shape its bytes) and of the input item's own digest.
A changed image, parameter, line of code or library therefore misses, and the stage computes the
item again; everything else is read back. Each entry's CRC-32 is checked on every read (the cache
is local: the check is for damage, while keys, which must not collide, are sha256): a damaged entry
is a miss, and is forgotten, so the next run computes it again.

The cache is a git-ignored folder of the checkout (``.imgclust/cache`` by default), never a DVC
output or a shared file; deleting it costs only time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path


def code_version(files: Iterable[Path], libraries: Iterable[str] = ("numpy", "PIL")) -> str:
    """Digest of the source ``files`` (sorted by name) and of the versions of ``libraries``."""
    import importlib.metadata

    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in files):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    for library in libraries:
        name = "pillow" if library == "PIL" else library
        digest.update(f"{name}=={importlib.metadata.version(name)}\0".encode())
    return digest.hexdigest()


INDEX = "index.sqlite"
BATCH_ENTRIES = 256  # entries per commit in a batch (see ItemCache.batch)
BATCH_S = 0.25  # and at least this often, so that another process sees progress


class ItemCache:
    """Entries of one stage version under ``root/<namespace>/``. ``root`` None: a cache that holds
    nothing (every lookup misses, nothing is written).

    Entries are appended to segment files (one per writing process and run) and listed in a SQLite
    index: creating a small file costs about 0.6 ms on this
    kind of disk, so 20,000 entries as files took 13 s to write where one segment takes 1.7 s.
    Several processes may write at once (a worker pool, queued experiments): each appends to its
    own segment, and SQLite serialises the index (key, segment, offset, size, CRC-32). The stages
    write from one process (their workers return results to it), so they never wait on each other."""

    def __init__(self, root: Path | None, namespace: str, version: dict):
        self.root = None if root is None else Path(root) / namespace
        self.version = hashlib.sha256(json.dumps(version, sort_keys=True, default=str).encode()).hexdigest()
        self._reset()

    def _reset(self) -> None:
        self._pid, self._db, self._segment, self._readers = os.getpid(), None, None, {}
        self._batch, self._pending, self._committed, self._ready = False, 0, 0.0, False

    def __getstate__(self) -> dict:  # to a worker process: without open files and connections
        return {"root": self.root, "version": self.version}

    def __setstate__(self, state: dict) -> None:
        self.root, self.version = state["root"], state["version"]
        self._reset()

    def key(self, *parts: str) -> str:
        """The entry key of an input item, from its digest (and anything else that makes it distinct)."""
        return hashlib.sha256("\0".join((self.version, *parts)).encode("utf-8", "surrogateescape")).hexdigest()

    def _index(self, create: bool):
        """The index connection of this process, or None (no cache, none yet, or unusable)."""
        import sqlite3

        if self.root is None:
            return None
        if self._pid != os.getpid():  # a forked child: the parent's connection and files are not ours
            self._reset()
        try:
            if self._db is None:
                if not create and not (self.root / INDEX).is_file():
                    return None
                self.root.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.root / INDEX, timeout=60, isolation_level=None)
                self._db.execute("PRAGMA synchronous=OFF")  # an entry lost in a power cut is computed again
            if create and not self._ready:
                # only a writer sets the file up: a reader (another process watching) takes no lock
                # that would wait on the writer's open transaction
                if self._db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":  # kept by the file
                    self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, segment TEXT NOT NULL, "
                    "offset INTEGER NOT NULL, size INTEGER NOT NULL, crc32 INTEGER NOT NULL)"
                )
                self._ready = True
        except (OSError, sqlite3.Error):
            return None
        return self._db

    def _lookup(self, key: str):
        import sqlite3

        db = self._index(create=False)
        if db is None:
            return None
        try:
            return db.execute("SELECT segment, offset, size, crc32 FROM entries WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error:
            return None

    def has(self, key: str) -> bool:
        return self._lookup(key) is not None

    def get(self, key: str) -> bytes | None:
        row = self._lookup(key)
        if row is None:
            return None
        segment, offset, size, digest = row
        try:
            if segment not in self._readers:
                self._readers[segment] = os.open(self.root / Path(segment).name, os.O_RDONLY)
            data = os.pread(self._readers[segment], size, offset)
        except OSError:
            data = b""
        if len(data) == size and zlib.crc32(data) == digest:
            return data
        self._forget(key)  # damaged: the next run computes it again
        return None

    def _forget(self, key: str) -> None:
        import sqlite3

        try:
            self._db.execute("DELETE FROM entries WHERE key = ?", (key,))
        except (AttributeError, sqlite3.Error):
            pass

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``; a cache that cannot be written (disk full, read-only) is
        skipped silently: it only saves time."""
        import sqlite3

        db = self._index(create=True)
        if db is None:
            return
        try:
            if self._segment is None:
                name = f"seg-{os.getpid()}-{os.urandom(6).hex()}.bin"
                self._segment = (name, open(self.root / name, "ab"))  # noqa: SIM115 - lives with the process
            name, fh = self._segment
            offset = fh.seek(0, os.SEEK_END)
            fh.write(data)
            fh.flush()  # on disk (the page cache) before the index points at it
            if self._batch and not db.in_transaction:
                db.execute("BEGIN")
            db.execute(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?)",
                (key, name, offset, len(data), zlib.crc32(data)),
            )
            self._pending += 1
            if self._batch and (self._pending >= BATCH_ENTRIES or time.monotonic() - self._committed > BATCH_S):
                self._commit()
        except (OSError, sqlite3.Error):
            pass

    def _commit(self) -> None:
        if self._db is not None and self._db.in_transaction:
            self._db.execute("COMMIT")
        self._pending, self._committed = 0, time.monotonic()

    @contextlib.contextmanager
    def batch(self) -> Iterator[ItemCache]:
        """Within the block, entries are committed to the index a few hundred at a time (or every
        quarter second) instead of one by one: 20,000 commits cost seconds."""
        import sqlite3

        self._batch, self._committed = True, time.monotonic()
        try:
            yield self
        finally:
            self._batch = False
            try:
                self._commit()
            except sqlite3.Error:
                pass

    def entries(self) -> dict[str, tuple[str, int, int]]:
        """Every entry: key -> (segment, offset, size), for inspection."""
        import sqlite3

        db = self._index(create=False)
        try:
            rows = [] if db is None else db.execute("SELECT key, segment, offset, size FROM entries").fetchall()
        except sqlite3.Error:  # a file a writer has only just created
            rows = []
        return {row[0]: tuple(row[1:]) for row in rows}


NO_CACHE = ItemCache(None, "none", {})  # for callers that keep nothing (tests, one-off runs)


@contextlib.contextmanager
def writable(cache: ItemCache, near: Path) -> Iterator[ItemCache]:
    """``cache``, or where it keeps nothing, a scratch cache in a hidden temporary folder beside
    ``near`` (removed afterwards): the stages compute into a cache, then pack from it in order."""
    if cache.root is not None:
        with cache.batch():
            yield cache
        return
    Path(near).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".imgclust-scratch-", dir=near) as scratch:
        with ItemCache(Path(scratch), "scratch", {}).batch() as store:
            yield store


def cached(cache: ItemCache, key: str, what: str) -> bytes:
    """The entry ``key``, which this run has just written; ``what`` names it should it be gone."""
    data = cache.get(key)
    if data is None:  # removed or damaged while the stage ran (someone cleared the cache)
        from imgclust.errors import OutputWriteError

        raise OutputWriteError(f"{cache.root}: the result for {what} vanished from the cache while it ran; rerun.")
    return data
