"""Register the model of a chosen run, or of the best run by a metric, in the MLflow model registry."""

from __future__ import annotations

import typer

from imgclust import config
from imgclust.errors import ParamError
from imgclust.tracking import store


def command(
    run_id: str = typer.Option(None, "--run", help="Run whose model to register."),
    best: str = typer.Option(
        None, help="Or: pick the finished run with the highest value of this metric (e.g. ari_test)."
    ),
    lowest: bool = typer.Option(False, help="With --best: lowest value wins (e.g. for an inertia)."),
    name: str = typer.Option("imgclust", help="Registered model name."),
    alias: str = typer.Option("champion", help="Alias to point at the new version ('' for none)."),
    artifact: str = typer.Option("image_model", help="image_model (image paths in) or model (features in)."),
    experiment: str = typer.Option(
        None, help="Experiment searched by --best (default: mlflow.experiment_name of params.yaml)."
    ),
) -> None:
    if bool(run_id) == bool(best):
        raise ParamError("give exactly one of --run RUN_ID or --best METRIC.")
    uri, _ = store.configure()
    with store.tracking_errors(), store.store_lock(uri):
        chosen = run_id or store.best_run_id(
            store.experiment_name(experiment or config.experiment_name()), best, ascending=lowest
        )
        version = store.register_model(chosen, name, alias or None, artifact)
    target = f"models:/{name}@{alias}" if alias else f"models:/{name}/{version.version}"
    typer.echo(f"register: run {chosen} -> {name} version {version.version} ({target})")
