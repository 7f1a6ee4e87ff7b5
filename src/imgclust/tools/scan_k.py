"""Scan a range of k with the train stage's settings: inertia, silhouette and (labels permitting)
ARI per k, with an elbow plot, logged as one MLflow run."""

from __future__ import annotations

from pathlib import Path

import typer

from imgclust import config
from imgclust.core import plots
from imgclust.core.clustering import scan_k
from imgclust.core.feature_store import load_features
from imgclust.core.fit_cache import FitCache
from imgclust.core.fsutil import write_json
from imgclust.tracking import runs


def run(
    features_dir: Path,
    ks: list[int],
    out: Path,
    plot: Path,
    params: config.PipelineParams,
    cache: FitCache | None = None,
) -> list[dict]:
    """Scan ``ks`` on the feature store with ``protocol`` and ``train.*``; write the table and plot.
    ``cache``: where the train stage keeps its fitted PCA (the same key: the scan reuses it)."""
    features, index, meta = load_features(features_dir)
    rows = scan_k(
        features,
        index,
        ks,
        method=meta["method"],
        pca_on_all=params.protocol == "tutorial",
        **params.train.fit_settings(),
        cache=cache,
    )
    write_json(out, [{k: (None if v != v else v) for k, v in row.items()} for row in rows])
    plots.plot_k_scan(
        [r["k"] for r in rows],
        [r["inertia"] for r in rows],
        [r["silhouette"] for r in rows],
        [r["ari_train"] for r in rows],
        plot,
    )
    return rows


def command(
    features_dir: Path = typer.Option(Path("data/features"), "--features", help="Feature store folder."),
    k_min: int = typer.Option(2, help="Smallest k."),
    k_max: int = typer.Option(8, help="Largest k."),
    out: Path = typer.Option(Path("reports/k_scan.json"), help="Table of figures per k."),
    plot: Path = typer.Option(Path("reports/k_scan.png"), help="Elbow / silhouette plot."),
    experiment: str = typer.Option(None, help="MLflow experiment (default: mlflow.experiment_name of params.yaml)."),
    mlflow_log: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Log the scan as an MLflow run."),
) -> None:
    params = config.load()
    features_meta = load_features(features_dir)[2]
    rows = run(features_dir, list(range(k_min, k_max + 1)), out, plot, params, config.fit_cache())
    for row in rows:
        typer.echo("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    if mlflow_log:
        settings = {"k_min": k_min, "k_max": k_max, "protocol": params.protocol, "train": params.train.model_dump()}
        run_id = runs.log_scan(
            rows, settings, features_meta["method"], [plot, out], experiment or params.mlflow.experiment_name
        )
        typer.echo(f"mlflow: k-scan run {run_id}")
