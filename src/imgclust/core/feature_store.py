"""The feature store: a folder holding ``features.npy`` (one row per image, memory-mapped),
``index.csv`` (the image of each row) and ``meta.json`` (how the features were made).

Written batch by batch with ordinary file writes (so a full disk is an OSError, not the SIGBUS a
writable memory map gets) and read memory-mapped, so neither side ever holds the whole matrix.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from imgclust.core.fsutil import read_csv, write_csv
from imgclust.errors import InputDataError, OutputWriteError, ParamError, did_you_mean

FEATURES_FILE, INDEX_FILE, META_FILE = "features.npy", "index.csv", "meta.json"
INDEX_FIELDS = ("file", "class", "split", "source", "op")
# featurize method -> dtype of its rows: pixels stay uint8 (scaled when used), CNN features are float32
METHOD_DTYPES = {"pixels": np.uint8, "cnn": np.float32}
METHODS = tuple(METHOD_DTYPES)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ParamError(
            f"unknown featurize.method {method!r}; use one of {', '.join(METHODS)}.{did_you_mean(method, METHODS)}"
        )


# errnos that mean "no room left" rather than a failing device
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), getattr(errno, "EFBIG", errno.ENOSPC)}


def write_error(path: Path, exc: OSError) -> OutputWriteError:
    """The OutputWriteError for a failed write of ``path``, saying when the disk is full."""
    if exc.errno in _NO_SPACE:
        return OutputWriteError(
            f"{path}: cannot write, the disk is full ({exc.strerror or exc}). Free space on that file system "
            "(or move the output elsewhere) and rerun the stage; nothing was kept of this output."
        )
    return OutputWriteError(f"{path}: write failed ({exc.strerror or exc}); nothing was kept of this output.")


class FeatureStoreWriter:
    """Fills a new store folder ``folder`` with ``n_rows`` x ``n_features`` rows, batch by batch;
    ``close`` writes the index and the meta data once every row is there.

    The .npy header is written first (as ``numpy.lib.format`` writes it), then each batch's bytes
    in order, so the file is byte for byte what ``np.lib.format.open_memmap`` would have made. A
    failed write (a full disk) raises OutputWriteError naming the file."""

    def __init__(self, folder: Path, n_rows: int, n_features: int, dtype):
        self.folder = Path(folder)
        self.path = self.folder / FEATURES_FILE
        self.n_rows, self.n_features, self.n_written = int(n_rows), int(n_features), 0
        self.dtype = np.dtype(dtype)
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (self.n_rows, self.n_features),
        }
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close() or on the first failure
        with self._write_errors():
            try:
                np.lib.format.write_array_header_1_0(self._file, header)
            except ValueError:  # header too long for format 1.0: numpy's own fallback
                np.lib.format.write_array_header_2_0(self._file, header)

    @contextlib.contextmanager
    def _write_errors(self):
        try:
            yield
        except OSError as exc:
            self._abandon()
            raise write_error(self.path, exc) from exc

    def _abandon(self) -> None:
        """Close the file after a failure (its bytes are discarded with the store's folder)."""
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    def append(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.n_features or self.n_written + len(rows) > self.n_rows:
            raise InputDataError(
                f"{self.path}: a batch of shape {rows.shape} does not fit the remaining "
                f"{self.n_rows - self.n_written} x {self.n_features} feature rows."
            )
        if self._file is None:
            raise OutputWriteError(f"{self.path}: the feature store was closed after a failed write.")
        # cast as assigning into the matrix did (unsafe casting), then write the rows in C order
        data = np.ascontiguousarray(rows.astype(self.dtype, copy=False))
        with self._write_errors():
            self._file.write(data.tobytes())
            self._file.flush()  # a full disk surfaces here, batch by batch, not at close
        self.n_written += len(rows)

    def reserve(self) -> tuple[Path, int]:
        """Size the file for every row at once, for writers that fill rows in place and in any
        order (``fill_rows``, e.g. from worker processes); return (the file, the offset of row 0).
        The rows count as written: ``close`` then only makes them durable."""
        if self.n_written:
            raise InputDataError(f"{self.path}: rows were appended already; reserve before any.")
        with self._write_errors():
            self._file.flush()
            offset = self._file.tell()
            self._file.truncate(offset + self.n_rows * self.n_features * self.dtype.itemsize)
        self.n_written = self.n_rows
        return self.path, offset

    def close(self, index: Iterable[dict], meta: dict) -> None:
        if self.n_written != self.n_rows:
            self._abandon()
            raise InputDataError(f"{self.folder}: {self.n_written} of {self.n_rows} feature rows written.")
        with self._write_errors():
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
        try:
            write_csv(self.folder / INDEX_FILE, index, INDEX_FIELDS)
        except OSError as exc:
            raise write_error(self.folder / INDEX_FILE, exc) from exc
        try:
            (self.folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        except OSError as exc:
            raise write_error(self.folder / META_FILE, exc) from exc


def pixel_rows(images) -> np.ndarray:
    """Equal-size uint8 images -> flattened uint8 rows: the pixels method's features (what
    ``extractors.PixelFeatures`` computes, here without scikit-learn, which costs the featurize
    stage more time to import than its pixel work on 1,000 images)."""
    arrays = [np.asarray(a) for a in images]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise InputDataError(f"pixel features need images of one size, got shapes {sorted(shapes)}")
    return np.stack(arrays).reshape(len(arrays), -1).astype(np.uint8, copy=False)


def fill_rows(path: Path, offset: int, start: int, rows: np.ndarray) -> None:
    """Write ``rows`` as rows ``start``, ``start + 1``... of the file a ``FeatureStoreWriter``
    reserved (``reserve``: its path and the offset of row 0), in place. A full disk (the reserved
    file is sparse until written) raises OutputWriteError naming the file."""
    data = np.ascontiguousarray(rows)
    try:
        with open(path, "r+b") as fh:
            fh.seek(offset + start * data[0].nbytes)
            fh.write(data.tobytes())
    except OSError as exc:
        raise write_error(path, exc) from exc


def load_features(features_dir: Path, mmap: bool = True) -> tuple[np.ndarray, list[dict], dict]:
    """(features, index rows, meta) of a feature store; features memory-mapped."""
    features_dir = Path(features_dir)
    path = features_dir / FEATURES_FILE
    if not path.is_file():
        raise InputDataError(f"{path}: not found; run the featurize stage (dvc repro featurize).")
    features = np.load(path, mmap_mode="r" if mmap else None)
    index = read_csv(features_dir / INDEX_FILE, required=INDEX_FIELDS)
    try:
        meta = json.loads((features_dir / META_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise InputDataError(f"{features_dir / META_FILE}: unreadable ({exc}); rerun featurize.") from None
    if len(index) != features.shape[0]:
        raise InputDataError(
            f"{features_dir}: {features.shape[0]} feature rows but {len(index)} index rows; rerun featurize."
        )
    return features, index, meta
