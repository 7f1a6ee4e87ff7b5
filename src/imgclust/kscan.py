"""Scan a range of k: inertia, silhouette and (labels permitting) ARI per k, with an elbow plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from imgclust.errors import ParamError
from imgclust.featurize import load_features
from imgclust.fsutil import write_json


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


def log_scan(rows: list[dict], settings: dict, method: str, artifacts: list[Path], experiment: str | None) -> str:
    """Log a k scan as one MLflow run (tag imgclust.kind=k_scan), a metric step per k; return its id."""
    import mlflow

    from imgclust import tracking

    uri, artifact_root = tracking.configure()
    with tracking.tracking_errors(), tracking.store_lock(uri):
        experiment_id = tracking.get_or_create_experiment(tracking.experiment_name(experiment), artifact_root)
        tags = {tracking.KIND_TAG: "k_scan", "featurize.method": method, **tracking.git_tags(Path.cwd())}
        ks = [row["k"] for row in rows]
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"k-scan {min(ks)}-{max(ks)}", tags=tags) as run:
            mlflow.log_params(settings)
            for row in rows:  # one step per k, so the MLflow UI draws the curves over k
                mlflow.log_metrics({k: v for k, v in row.items() if k != "k" and v == v}, step=row["k"])
            for path in artifacts:
                mlflow.log_artifact(str(path))
        return run.info.run_id


def command(
    features_dir: Path = typer.Option(Path("data/features"), "--features", help="featurize output folder."),
    k_min: int = typer.Option(2, help="Smallest k."),
    k_max: int = typer.Option(8, help="Largest k."),
    params_file: Path = typer.Option(Path("params.yaml"), "--params",
                                     help="protocol and train.* settings are taken from here (when it exists)."),
    out: Path = typer.Option(Path("reports/k_scan.json"), help="Table of figures per k."),
    plot: Path = typer.Option(Path("reports/k_scan.png"), help="Elbow / silhouette plot."),
    experiment: str = typer.Option(None, help="MLflow experiment (default: mlflow.experiment_name of params.yaml)."),
    mlflow_log: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Log the scan as an MLflow run."),
) -> None:
    from imgclust import plots
    from imgclust.params import load_params

    # the same model settings as the train stage, so the scan explores the model that is trained
    params = load_params(params_file) if params_file.is_file() else {}
    train = params.get("train", {})
    settings = {"protocol": params.get("protocol", "honest"),
                "n_components": train.get("pca", {}).get("n_components", 50),
                "svd_solver": train.get("pca", {}).get("svd_solver", "auto"),
                "n_init": train.get("kmeans", {}).get("n_init", 10),
                "random_state": train.get("kmeans", {}).get("random_state", 0)}
    features, index, meta = load_features(features_dir)
    rows = scan_k(features, index, list(range(k_min, k_max + 1)), method=meta["method"],
                  n_components=settings["n_components"] or None, svd_solver=settings["svd_solver"],
                  n_init=settings["n_init"], random_state=settings["random_state"],
                  pca_on_all=settings["protocol"] == "tutorial")
    write_json(out, [{k: (None if v != v else v) for k, v in row.items()} for row in rows])
    plots.plot_k_scan([r["k"] for r in rows], [r["inertia"] for r in rows], [r["silhouette"] for r in rows],
                      [r["ari_train"] for r in rows], plot)
    for row in rows:
        typer.echo("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    if mlflow_log:
        run_id = log_scan(rows, {"k_min": k_min, "k_max": k_max, **settings}, meta["method"], [plot, out], experiment)
        typer.echo(f"mlflow: k-scan run {run_id}")
