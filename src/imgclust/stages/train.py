"""Stage train: fit (pixel scaling,) PCA (optional) and the clusterer on the TRAIN rows of the feature
store; labels are never used."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import typer

from imgclust import config
from imgclust.core import progress
from imgclust.core.clustering import fit_model
from imgclust.core.feature_store import load_features
from imgclust.core.fit_cache import FitCache
from imgclust.core.fsutil import atomic_file
from imgclust.errors import InputDataError

# the keys of params.yaml this stage reads: its `params` in dvc.yaml, and all it may read
PARAMS = ("protocol", "train")


def run(
    features_dir: Path, out: Path, params: config.PipelineParams, cache: FitCache | None = None
) -> tuple[object, int]:
    """Fit the model with ``protocol`` and ``train.*`` and write it to ``out`` (joblib); return it
    and its number of train rows. ``cache``: where the fitted PCA is kept and looked up (none: no
    caching); the model is the same either way."""
    import joblib

    features, index, meta = load_features(features_dir)
    is_train = np.array([row["split"] == "train" for row in index])
    if not is_train.any():
        raise InputDataError(f"{features_dir}: no train rows; check the split stage.")
    train = params.train
    steps = progress.Steps("train", 2)
    steps.step(f"fit on {int(is_train.sum())} train rows")
    pipeline = fit_model(
        features,
        is_train,
        method=meta["method"],
        pca_on_all=params.protocol == "tutorial",
        **train.fit_settings(),
        **train.clusterer_settings(),
        cache=cache,
    )
    steps.step("write model")
    with atomic_file(out) as tmp:
        joblib.dump(pipeline, tmp)
    steps.close()
    return pipeline, int(is_train.sum())


def command(
    features_dir: Path = typer.Option(..., "--features", help="Feature store folder."),
    out: Path = typer.Option(..., help="Fitted pipeline to write."),
) -> None:
    # the fitted PCA of recent fits, so that a rerun changing only the clusterer skips the PCA
    cache = config.fit_cache()
    pipeline, n_train = run(features_dir, out, config.load(PARAMS), cache)
    if cache is not None and cache.last:
        typer.echo(f"train: PCA cache ({os.path.relpath(cache.folder)}): {cache.last}")
    typer.echo(f"train: {' -> '.join(pipeline.named_steps)} on {n_train} train rows -> {out}")
