"""A content-addressed cache of per-image results, so that a stage computes only the images it has
not seen (DVC reruns a stage on all of its inputs whenever one of them changes).

An entry's key is the sha256 of the stage's *version* (its parameters, the digest of the code it
runs and the versions of the libraries that shape its bytes) and of the input item's own digest.
A changed image, parameter, line of code or library therefore misses, and the stage computes the
item again; everything else is read back. Entries are written atomically (temporary file, then
rename) and carry the sha256 of their payload, checked on every read: a damaged entry is a miss.

The cache is a git-ignored folder of the checkout (``.imgclust/cache`` by default), never a DVC
output or a shared file; deleting it costs only time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

DIGEST_BYTES = 32


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


class ItemCache:
    """Entries of one stage version under ``root/<namespace>/``. ``root`` None: a cache that holds
    nothing (every lookup misses, nothing is written)."""

    def __init__(self, root: Path | None, namespace: str, version: dict):
        self.root = None if root is None else Path(root) / namespace
        self.version = hashlib.sha256(json.dumps(version, sort_keys=True, default=str).encode()).hexdigest()

    def key(self, *parts: str) -> str:
        """The entry key of an input item, from its digest (and anything else that makes it distinct)."""
        return hashlib.sha256("\0".join((self.version, *parts)).encode("utf-8", "surrogateescape")).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / key[2:]

    def get(self, key: str) -> bytes | None:
        if self.root is None:
            return None
        try:
            with open(self._path(key), "rb") as fh:
                blob = fh.read()
        except OSError:
            return None
        digest, data = blob[:DIGEST_BYTES], blob[DIGEST_BYTES:]
        return data if hashlib.sha256(data).digest() == digest else None

    def has(self, key: str) -> bool:
        return self.root is not None and self._path(key).is_file()

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``; a cache that cannot be written (disk full, read-only) is
        skipped silently: it only saves time."""
        if self.root is None:
            return
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(hashlib.sha256(data).digest() + data)
            os.replace(tmp, path)
        except OSError:
            try:
                tmp.unlink()
            except OSError:
                pass


NO_CACHE = ItemCache(None, "none", {})  # for callers that keep nothing (tests, one-off runs)


@contextlib.contextmanager
def writable(cache: ItemCache, near: Path) -> Iterator[ItemCache]:
    """``cache``, or where it keeps nothing, a scratch cache in a hidden temporary folder beside
    ``near`` (removed afterwards): the stages compute into a cache, then pack from it in order."""
    if cache.root is not None:
        yield cache
        return
    Path(near).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".imgclust-scratch-", dir=near) as scratch:
        yield ItemCache(Path(scratch), "scratch", {})


def cached(cache: ItemCache, key: str, what: str) -> bytes:
    """The entry ``key``, which this run has just written; ``what`` names it should it be gone."""
    data = cache.get(key)
    if data is None:  # removed or damaged while the stage ran (someone cleared the cache)
        from imgclust.errors import OutputWriteError

        raise OutputWriteError(f"{cache.root}: the result for {what} vanished from the cache while it ran; rerun.")
    return data
