"""Fit (pixel scaling,) PCA (optional) and KMeans on the TRAIN features; labels are never used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from imgclust.cliopts import bool_option
from imgclust.errors import InputDataError, ParamError
from imgclust.featurize import load_features

SVD_SOLVERS = ("auto", "full", "covariance_eigh", "arpack", "randomized")


def check_params(n_fit_pca: int, n_train: int, n_features: int, n_components: int | None,
                 n_clusters: int, svd_solver: str) -> None:
    """Refuse impossible settings before any fitting, with the limit the data imposes."""
    if n_clusters < 2:
        raise ParamError(f"train.kmeans.n_clusters must be >= 2, got {n_clusters}.")
    if n_clusters > n_train:
        raise ParamError(f"train.kmeans.n_clusters={n_clusters} exceeds the {n_train} train images.")
    if svd_solver not in SVD_SOLVERS:
        raise ParamError(f"unknown train.pca.svd_solver {svd_solver!r}; use one of {', '.join(SVD_SOLVERS)}.")
    if n_components is not None:
        limit = min(n_fit_pca, n_features) - (1 if svd_solver == "arpack" else 0)
        if not 1 <= n_components <= limit:
            raise ParamError(
                f"train.pca.n_components={n_components} is not in [1, {limit}] for {n_fit_pca} images x "
                f"{n_features} features (solver {svd_solver}); lower it or set it to 0 to disable PCA."
            )


def build_and_fit(features: np.ndarray, is_train: np.ndarray, *, method: str, n_components: int | None,
                  whiten: bool = False, svd_solver: str = "auto", n_clusters: int = 3, n_init: int = 10,
                  random_state: int = 0, pca_on_all: bool = False):
    """Return a fitted ``Pipeline``. PCA is fitted on the train rows, or on all rows when
    ``pca_on_all`` (the tutorial protocol, as the seed recipe did); KMeans always on train rows."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.pipeline import Pipeline

    from imgclust.features import PixelScaler

    n_components = n_components or None  # 0 means no PCA, as in params.yaml
    is_train = np.asarray(is_train, dtype=bool)
    n_train = int(is_train.sum())
    n_fit_pca = len(features) if pca_on_all else n_train
    check_params(n_fit_pca, n_train, features.shape[1], n_components, n_clusters, svd_solver)
    steps = [("scale", PixelScaler())] if method == "pixels" else []
    if n_components:
        steps.append(("pca", PCA(n_components=n_components, whiten=whiten, svd_solver=svd_solver,
                                 random_state=random_state)))
    kmeans = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=random_state)
    pipeline = Pipeline(steps + [("kmeans", kmeans)])
    if len(steps) == 0:
        pipeline.fit(features[is_train])
        return pipeline
    transform = pipeline[:-1]
    transform.fit(features if pca_on_all else features[is_train])
    kmeans.fit(transform.transform(features[is_train]))
    return pipeline


def command(
    features_dir: Path = typer.Option(Path("data/features"), "--features", help="featurize output folder."),
    out: Path = typer.Option(Path("models/model.joblib"), help="Fitted pipeline to write."),
    protocol: str = typer.Option("honest", help="honest or tutorial (PCA fitted on all rows)."),
    n_components: int = typer.Option(50, help="PCA components (0: no PCA)."),
    whiten: str = bool_option(False, "--whiten", help="Whiten PCA components."),
    svd_solver: str = typer.Option("auto", help="PCA solver."),
    n_clusters: int = typer.Option(3, help="KMeans clusters."),
    n_init: int = typer.Option(10, help="KMeans initialisations."),
    random_state: int = typer.Option(0, help="Seed of PCA and KMeans."),
) -> None:
    import joblib

    from imgclust.fsutil import atomic_file

    features, index, meta = load_features(features_dir)
    is_train = np.array([row["split"] == "train" for row in index])
    if not is_train.any():
        raise InputDataError(f"{features_dir}: no train rows; check the split stage.")
    pipeline = build_and_fit(features, is_train, method=meta["method"], n_components=n_components or None,
                             whiten=whiten, svd_solver=svd_solver, n_clusters=n_clusters, n_init=n_init,
                             random_state=random_state, pca_on_all=protocol == "tutorial")
    with atomic_file(out) as tmp:
        joblib.dump(pipeline, tmp)
    typer.echo(f"train: {' -> '.join(pipeline.named_steps)} on {int(is_train.sum())} train rows -> {out}")
