"""A content-addressed cache of the fitted transform (PCA) and the train rows' embedding.

Changing only what comes after the PCA (``train.kmeans.n_clusters``, the clusterer...) leaves the
PCA and the train rows' embedding as they were, and the PCA is most of training (about 20 s for
20,000 images of 190x190). The train stage keeps them here, under a git-ignored folder
(``.imgclust/cache/train``), so such a rerun only clusters.

An entry is a folder named by its key: the SHA-256 of everything the fitted transform depends on
(the feature file's content, the fit and train rows, the transform's class and parameters, the
library versions and the source of the code that fits it; see ``cache_key``). It holds plain arrays
(``.npy``, read with ``allow_pickle=False``) and ``manifest.json``: the estimator's fitted attributes
in the order fitting set them (so the restored estimator pickles to the same bytes) and each file's
SHA-256. Nothing is unpickled; every file is checked against the manifest when read, and the caller
(``core.clustering``) recomputes one batch of the embedding and compares it bit for bit before using
an entry, so a damaged or wrong entry is refitted over, never used. At most ``MAX_ENTRIES`` entries
are kept; the least recently used go first. Timings never enter an entry: it is a pure function of
its key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from importlib import metadata
from pathlib import Path

import numpy as np

CACHE_FORMAT = 1
MAX_ENTRIES = 8  # an entry is about 11 MB at 20,000 images (PCA(50) of 36,100 features + embedding)
MANIFEST = "manifest.json"
EMBEDDING = "embedding.npy"
_KEY = re.compile(r"[0-9a-f]{64}")
_STALE_TMP_S = 24 * 3600  # a temporary entry folder this old was left by a killed process
# what the fitted state may hold: numbers, booleans, None and strings (numbers and booleans as arrays)
_JSON_TYPES = {"bool": bool, "int": int, "float": float, "str": str, "none": type(None)}
_ARRAY_KINDS = "biuf"
# the code whose changes must invalidate every entry: this module, the fitting code, pixel scaling
_CODE_MODULES = ("fit_cache.py", "clustering.py", "scaling.py")
_LIBRARIES = ("numpy", "scipy", "scikit-learn", "threadpoolctl")


class Unsupported(Exception):
    """A fitted state this cache cannot store without pickle."""


def _fitted_name(name) -> bool:
    """scikit-learn's names for what fitting sets: ``name_`` (public) or ``_name`` (private)."""
    return (
        isinstance(name, str)
        and name.isidentifier()
        and not name.startswith("__")
        and (name.endswith("_") or name.startswith("_"))
    )


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


_DIGEST_PARTS = 4  # a file's digest: SHA-256 of its quarters' SHA-256s, hashed side by side


def file_digest(path: Path) -> str:
    """Content digest of a (large) file: its ``_DIGEST_PARTS`` parts are hashed on as many threads as
    there are cores (hashlib lets go of the GIL), reading with plain reads."""
    from concurrent.futures import ThreadPoolExecutor

    size = os.path.getsize(path)
    bounds = [size * i // _DIGEST_PARTS for i in range(_DIGEST_PARTS + 1)]

    def part(i: int) -> bytes:
        digest = hashlib.sha256()
        with open(path, "rb", buffering=0) as fh:
            fh.seek(bounds[i])
            left = bounds[i + 1] - bounds[i]
            buffer = bytearray(min(left, 4 * 2**20))
            view = memoryview(buffer)
            while left:
                n = fh.readinto(view[: min(left, len(buffer))])
                if not n:
                    raise OSError(f"{path}: file shrank while being read")
                digest.update(view[:n])
                left -= n
        return digest.digest()

    with ThreadPoolExecutor(max_workers=min(_DIGEST_PARTS, os.cpu_count() or 1)) as pool:
        parts = list(pool.map(part, range(_DIGEST_PARTS)))
    return hashlib.sha256(f"{size}:".encode() + b"".join(parts)).hexdigest()


def array_digest(array: np.ndarray) -> dict:
    """Content digest of ``array``: of its file when it is a memory map of a whole .npy file (read
    with plain reads, so the pages do not count as this process's memory), else of its bytes."""
    described = {"shape": list(array.shape), "dtype": array.dtype.str}
    filename = getattr(array, "filename", None)
    if isinstance(array, np.memmap) and filename and array.offset + array.nbytes == os.path.getsize(filename):
        return {**described, "file_digest": file_digest(Path(filename)), "offset": int(array.offset)}
    digest = hashlib.sha256()
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    step = 64 * 2**20
    for start in range(0, len(flat), step):
        digest.update(flat[start : start + step])
    return {**described, "sha256": digest.hexdigest()}


def rows_digest(mask: np.ndarray) -> str:
    """Digest of a boolean row mask."""
    mask = np.asarray(mask, dtype=bool)
    return hashlib.sha256(f"{len(mask)}:".encode() + np.packbits(mask).tobytes()).hexdigest()


def code_version() -> dict:
    """The library versions and the source digests of the code that fits and restores a transform."""
    here = Path(__file__).parent
    versions = {name: metadata.version(name) for name in _LIBRARIES}
    sources = {name: hashlib.sha256((here / name).read_bytes()).hexdigest() for name in _CODE_MODULES}
    return {"format": CACHE_FORMAT, "libraries": versions, "sources": sources}


def estimator_description(estimator) -> dict:
    """Class and parameters of an unfitted estimator, for a key (TypeError if a parameter is no plain value)."""
    params = estimator.get_params(deep=False)
    json.dumps(params, allow_nan=True)  # TypeError: e.g. a RandomState, which a key cannot hold
    cls = type(estimator)
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "params": params}


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _checked_strides(shape, strides, itemsize: int) -> list[int]:
    """``strides`` if they address each element once, forwards, within 64 times the data's size."""
    strides = [int(x) for x in strides]
    if len(strides) != len(shape) or any(x <= 0 or x % itemsize for x in strides):
        raise Unsupported(f"strides {strides} of an array of shape {tuple(shape)}")
    reach = itemsize
    for n, stride in sorted(zip(shape, strides), key=lambda pair: pair[1]):
        if stride < reach and n > 1:
            raise Unsupported(f"overlapping strides {strides}")
        reach = stride * n
    if reach > 64 * itemsize * max(int(np.prod(shape)), 1):
        raise Unsupported(f"strides {strides} span far more than the data")
    return strides


def _strided_copy(data: np.ndarray, strides: list) -> np.ndarray:
    """A copy of ``data`` laid out with ``strides`` (in a zero-filled buffer), as the fitted array was."""
    strides = _checked_strides(data.shape, strides, data.itemsize)
    if data.size == 0:
        return data
    extent = sum((n - 1) * stride for n, stride in zip(data.shape, strides)) + data.itemsize
    view = np.lib.stride_tricks.as_strided(
        np.zeros(extent // data.itemsize, data.dtype), data.shape, strides, writeable=True
    )
    view[...] = data
    return view


class FitCache:
    """Entries under ``folder``; ``last`` says what the latest lookup did ("hit", "miss", "refused:
    WHY" for an entry found but not used, "stored", "not stored: WHY")."""

    def __init__(self, folder: Path, max_entries: int = MAX_ENTRIES):
        self.folder = Path(folder)
        self.max_entries = max_entries
        self.last = ""

    # ------------------------------------------------------------------ reading

    def load(self, key: str, estimator):
        """(``estimator`` with the entry's fitted attributes set, the embedding), or None when there
        is no usable entry. ``estimator`` must be a fresh unfitted one, made as for the fit."""
        entry = self.folder / key
        if not (entry / MANIFEST).is_file():
            self.last = "miss"
            return None
        try:
            restored = self._read(entry, key, estimator)
        except (OSError, ValueError, KeyError, TypeError, Unsupported) as exc:
            self.last = f"refused: {exc}"
            self.discard(key)
            return None
        self.last = "hit"
        try:
            os.utime(entry / MANIFEST)  # recently used: evicted last
        except OSError:
            pass
        return restored

    def _read(self, entry: Path, key: str, estimator):
        manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("key") != key or manifest.get("format") != CACHE_FORMAT:
            raise ValueError("manifest of another key or format")
        params = estimator.get_params(deep=False)
        if hasattr(estimator, "n_features_in_"):
            raise ValueError("the estimator to restore into is already fitted")
        for item in manifest["attributes"]:
            name = item["name"]
            if not _fitted_name(name) or name in params:
                raise ValueError(f"attribute name {name!r} is not a fitted attribute")
            setattr(estimator, name, self._value(entry, item, params))
        embedding = self._array(entry, manifest["embedding"])
        if embedding.ndim != 2:
            raise ValueError(f"embedding of shape {embedding.shape}")
        return estimator, embedding

    def _value(self, entry: Path, item: dict, params: dict):
        kind = item["kind"]
        if kind == "array":
            array = self._array(entry, item)
            return _strided_copy(array, item["strides"]) if "strides" in item else array
        if kind == "scalar":
            value = self._array(entry, item)
            if value.ndim != 0:
                raise ValueError(f"{item['name']}: scalar of shape {value.shape}")
            return value[()]
        if kind == "param":
            return params[item["param"]]
        if kind in _JSON_TYPES and type(item["value"]) is _JSON_TYPES[kind]:
            return item["value"]
        raise ValueError(f"{item['name']}: value of kind {kind!r} does not match {item.get('value')!r}")

    @staticmethod
    def _array(entry: Path, item: dict) -> np.ndarray:
        name = item["file"]
        if not re.fullmatch(r"[a-z0-9_]+\.npy", name):
            raise ValueError(f"file name {name!r}")
        path = entry / name
        if _sha256_file(path) != item["sha256"]:
            raise ValueError(f"{name}: content does not match its digest")
        array = np.load(path, allow_pickle=False)
        if array.dtype.kind not in _ARRAY_KINDS:
            raise ValueError(f"{name}: dtype {array.dtype}")
        return array

    # ------------------------------------------------------------------ writing

    def store(self, key: str, estimator, embedding: np.ndarray) -> None:
        """Keep ``estimator``'s fitted state and ``embedding`` under ``key``; never fails the fit (a
        state that needs pickle, or a full disk, just leaves no entry)."""
        tmp = self.folder / f"{key}.tmp-{os.getpid()}"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            attributes = self._write_state(tmp, estimator)
            manifest = {
                "format": CACHE_FORMAT,
                "key": key,
                "attributes": attributes,
                "embedding": self._write_array(tmp, "embedding", np.asarray(embedding)),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
            try:
                tmp.rename(self.folder / key)
            except OSError:  # another process stored the same key meanwhile: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
            self.last = "stored"
        except (OSError, Unsupported) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            self.last = f"not stored: {exc}"
            return
        self._evict()

    def _write_state(self, folder: Path, estimator) -> list[dict]:
        params = estimator.get_params(deep=False)
        attributes = []
        for i, (name, value) in enumerate(vars(estimator).items()):
            if name in params:
                continue
            if not _fitted_name(name):
                raise Unsupported(f"attribute {name!r} is neither a parameter nor a fitted attribute")
            item = {"name": name}
            param = next((p for p, v in params.items() if isinstance(value, str) and v is value), None)
            if param is not None:
                # the very object of a parameter: pickle refers back to it, so restore it as that object
                item.update(kind="param", param=param)
            elif isinstance(value, np.ndarray) and value.dtype.kind in _ARRAY_KINDS:
                item.update(kind="array", **self._write_array(folder, f"a{i}", value))
                if not (value.flags.c_contiguous or value.flags.f_contiguous):
                    # a view (e.g. rows of a larger matrix): BLAS takes another path for it than for
                    # a contiguous copy, with other last bits, so it is restored with these strides
                    item["strides"] = _checked_strides(value.shape, value.strides, value.itemsize)
            elif isinstance(value, np.generic) and value.dtype.kind in _ARRAY_KINDS:
                item.update(kind="scalar", **self._write_array(folder, f"a{i}", np.asarray(value)))
            else:
                kind = next((k for k, t in _JSON_TYPES.items() if type(value) is t), None)
                if kind is None:
                    raise Unsupported(f"attribute {name!r} of type {type(value).__name__}")
                item.update(kind=kind, value=value)
            attributes.append(item)
        return attributes

    @staticmethod
    def _write_array(folder: Path, stem: str, array: np.ndarray) -> dict:
        path = folder / f"{stem}.npy"
        np.save(path, array, allow_pickle=False)
        return {"file": path.name, "sha256": _sha256_file(path)}

    # ------------------------------------------------------------------ eviction

    def discard(self, key: str) -> None:
        if _KEY.fullmatch(key):
            shutil.rmtree(self.folder / key, ignore_errors=True)

    def _evict(self) -> None:
        """Keep the ``max_entries`` most recently used entries; drop temporary folders of killed runs."""
        try:
            children = list(self.folder.iterdir())
        except OSError:
            return
        entries = []
        for child in children:
            try:
                if _KEY.fullmatch(child.name):
                    entries.append(((child / MANIFEST).stat().st_mtime, child.name))
                elif ".tmp-" in child.name and time.time() - child.stat().st_mtime > _STALE_TMP_S:
                    shutil.rmtree(child, ignore_errors=True)
            except OSError:  # no manifest: an entry from outside this cache's writes
                shutil.rmtree(child, ignore_errors=True)
        for _, name in sorted(entries, reverse=True)[self.max_entries :]:
            self.discard(name)
