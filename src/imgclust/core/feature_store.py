"""The feature store: a folder holding ``features.npy`` (one row per image, memory-mapped),
``index.csv`` (the image of each row) and ``meta.json`` (how the features were made).

Written batch by batch and read memory-mapped, so neither side ever holds the whole matrix.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from imgclust.core.fsutil import read_csv, write_csv
from imgclust.core.parallel import release_pages
from imgclust.errors import InputDataError, ParamError, did_you_mean

FEATURES_FILE, INDEX_FILE, META_FILE = "features.npy", "index.csv", "meta.json"
INDEX_FIELDS = ("file", "class", "split", "source", "op")
# featurize method -> dtype of its rows: pixels stay uint8 (scaled when used), CNN features are float32
METHOD_DTYPES = {"pixels": np.uint8, "cnn": np.float32}
METHODS = tuple(METHOD_DTYPES)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ParamError(f"unknown featurize.method {method!r}; use one of {', '.join(METHODS)}."
                         f"{did_you_mean(method, METHODS)}")


class FeatureStoreWriter:
    """Fills a new store folder ``folder`` with ``n_rows`` x ``n_features`` rows, batch by batch;
    ``close`` writes the index and the meta data once every row is there."""

    def __init__(self, folder: Path, n_rows: int, n_features: int, dtype):
        self.folder = Path(folder)
        self.n_rows, self.n_written = n_rows, 0
        self.matrix = np.lib.format.open_memmap(self.folder / FEATURES_FILE, mode="w+", dtype=dtype,
                                                shape=(n_rows, n_features))

    def append(self, rows: np.ndarray) -> None:
        self.matrix[self.n_written:self.n_written + len(rows)] = rows
        self.n_written += len(rows)
        self.matrix.flush()
        release_pages(self.matrix)

    def close(self, index: Iterable[dict], meta: dict) -> None:
        if self.n_written != self.n_rows:
            raise InputDataError(f"{self.folder}: {self.n_written} of {self.n_rows} feature rows written.")
        self.matrix.flush()
        del self.matrix
        write_csv(self.folder / INDEX_FILE, index, INDEX_FIELDS)
        (self.folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


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
        raise InputDataError(f"{features_dir}: {features.shape[0]} feature rows but {len(index)} index rows; "
                             "rerun featurize.")
    return features, index, meta
