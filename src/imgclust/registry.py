"""Register the model of a chosen run, or of the best run by a metric, in the MLflow model registry."""

from __future__ import annotations

import typer

from imgclust.compare import metric_name
from imgclust.errors import ParamError
from imgclust.tracking import PIPELINE_RUNS

MODEL_ARTIFACTS = ("image_model", "model")


def best_run_id(experiment_name: str, metric: str, ascending: bool = False) -> str:
    import mlflow

    experiment = mlflow.MlflowClient().get_experiment_by_name(experiment_name)
    if experiment is None:
        raise ParamError(f"no MLflow experiment {experiment_name!r} in {mlflow.get_tracking_uri()}.")
    metric = metric_name(metric)
    runs = mlflow.MlflowClient().search_runs(
        [experiment.experiment_id], filter_string=f"attributes.status = 'FINISHED' and {PIPELINE_RUNS}",
        order_by=[f"metrics.{metric} {'ASC' if ascending else 'DESC'}"], max_results=1)
    if not runs or metric not in runs[0].data.metrics:
        raise ParamError(f"no finished run of experiment {experiment_name!r} has metric {metric!r}.")
    return runs[0].info.run_id


def register(run_id: str, name: str, alias: str | None = "champion", artifact: str = "image_model"):
    """Register ``runs:/<run_id>/<artifact>`` as a new version of ``name`` and point ``alias`` at it."""
    import mlflow

    if artifact not in MODEL_ARTIFACTS:
        raise ParamError(f"unknown model artifact {artifact!r}; use one of {', '.join(MODEL_ARTIFACTS)}.")
    from imgclust.tracking import MODEL_URI_TAG

    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ParamError(f"no run {run_id!r} in {mlflow.get_tracking_uri()}; see `imgclust compare`.") from None
    source = run.data.tags.get(MODEL_URI_TAG.format(artifact), f"runs:/{run_id}/{artifact}")
    version = mlflow.register_model(source, name)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return version


def command(
    run_id: str = typer.Option(None, "--run", help="Run whose model to register."),
    best: str = typer.Option(None, help="Or: pick the finished run with the highest value of this metric (e.g. ari_test)."),
    lowest: bool = typer.Option(False, help="With --best: lowest value wins (e.g. for an inertia)."),
    name: str = typer.Option("imgclust", help="Registered model name."),
    alias: str = typer.Option("champion", help="Alias to point at the new version ('' for none)."),
    artifact: str = typer.Option("image_model", help="image_model (image paths in) or model (features in)."),
    experiment: str = typer.Option(None, help="Experiment searched by --best (default: mlflow.experiment_name of params.yaml)."),
) -> None:
    from imgclust import tracking

    if bool(run_id) == bool(best):
        raise ParamError("give exactly one of --run RUN_ID or --best METRIC.")
    uri, _ = tracking.configure()
    with tracking.tracking_errors(), tracking.store_lock(uri):
        chosen = run_id or best_run_id(tracking.experiment_name(experiment), best, ascending=lowest)
        version = register(chosen, name, alias or None, artifact)
    target = f"models:/{name}@{alias}" if alias else f"models:/{name}/{version.version}"
    typer.echo(f"register: run {chosen} -> {name} version {version.version} ({target})")
