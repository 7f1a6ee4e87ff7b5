"""Scan a range of k: inertia, silhouette and (labels permitting) ARI per k, with an elbow plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from imgclust.errors import ParamError
from imgclust.featurize import load_features
from imgclust.fsutil import write_json

KIND_TAG = "imgclust.kind"


def scan_k(features: np.ndarray, index: list[dict], ks: list[int], *, method: str, n_components: int | None,
           svd_solver: str = "auto", n_init: int = 10, random_state: int = 0, pca_on_all: bool = False) -> list[dict]:
    """Fit the transform part of the pipeline once, then KMeans for every k on the TRAIN rows."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    from imgclust.metrics import clustering_metrics
    from imgclust.train import build_and_fit, embed

    is_train = np.array([row["split"] == "train" for row in index])
    if not ks or min(ks) < 2 or max(ks) > int(is_train.sum()):
        raise ParamError(f"k must lie in [2, {int(is_train.sum())}] (train images), got {ks}.")
    base = build_and_fit(features, is_train, method=method, n_components=n_components, svd_solver=svd_solver,
                         n_clusters=min(ks), n_init=1, random_state=random_state, pca_on_all=pca_on_all)
    embedding = embed(base, features)
    labels = np.array([row["class"] for row in index])
    rows = []
    for k in tqdm_range(ks):
        kmeans = KMeans(n_clusters=k, n_init=n_init, random_state=random_state).fit(embedding[is_train])
        train = clustering_metrics(kmeans.labels_, labels[is_train], embedding[is_train], random_state=random_state)
        row = {"k": k, "inertia": float(kmeans.inertia_), "silhouette": train["silhouette"], "ari_train": train["ari"]}
        if (~is_train).any():
            row["ari_test"] = float(adjusted_rand_score(labels[~is_train], kmeans.predict(embedding[~is_train])))
        rows.append(row)
    return rows


def tqdm_range(ks: list[int]):
    from tqdm import tqdm

    return tqdm(ks, desc="scan-k", unit="k", disable=None, leave=False)


def command(
    features_dir: Path = typer.Option(Path("data/features"), "--features", help="featurize output folder."),
    k_min: int = typer.Option(2, help="Smallest k."),
    k_max: int = typer.Option(8, help="Largest k."),
    protocol: str = typer.Option("honest", help="honest or tutorial (PCA fitted on all rows)."),
    n_components: int = typer.Option(50, help="PCA components (0: no PCA)."),
    n_init: int = typer.Option(10, help="KMeans initialisations per k."),
    random_state: int = typer.Option(0, help="Seed of PCA and KMeans."),
    out: Path = typer.Option(Path("reports/k_scan.json"), help="Table of figures per k."),
    plot: Path = typer.Option(Path("plots/k_scan.png"), help="Elbow / silhouette plot."),
    experiment: str = typer.Option("imgclust", help="MLflow experiment to log the scan to."),
    mlflow_log: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Log the scan as an MLflow run."),
) -> None:
    from imgclust import plots, tracking

    features, index, meta = load_features(features_dir)
    rows = scan_k(features, index, list(range(k_min, k_max + 1)), method=meta["method"],
                  n_components=n_components or None, n_init=n_init, random_state=random_state,
                  pca_on_all=protocol == "tutorial")
    write_json(out, [{k: (None if v != v else v) for k, v in row.items()} for row in rows])
    plots.plot_k_scan([r["k"] for r in rows], [r["inertia"] for r in rows], [r["silhouette"] for r in rows],
                      [r["ari_train"] for r in rows], plot)
    for row in rows:
        typer.echo("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    if not mlflow_log:
        return
    import mlflow

    uri, artifact_root = tracking.configure()
    with tracking.store_lock(uri):
        experiment_id = tracking.get_or_create_experiment(experiment, artifact_root)
        tags = {KIND_TAG: "k_scan", "featurize.method": meta["method"], **tracking.git_tags(Path.cwd())}
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"k-scan {k_min}-{k_max}", tags=tags) as run:
            mlflow.log_params({"k_min": k_min, "k_max": k_max, "protocol": protocol, "n_components": n_components,
                               "n_init": n_init, "random_state": random_state})
            for row in rows:  # one step per k, so the MLflow UI draws the curves over k
                mlflow.log_metrics({k: v for k, v in row.items() if k != "k" and v == v}, step=row["k"])
            mlflow.log_artifact(str(plot))
            mlflow.log_artifact(str(out))
    typer.echo(f"mlflow: k-scan run {run.info.run_id}")
