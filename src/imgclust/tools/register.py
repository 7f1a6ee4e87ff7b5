"""Register the model of a chosen run, or of the best run by a metric, in the MLflow model registry.

``--best`` ranks the runs of one dataset only: by default the data version of the project's
dvc.lock (the data the workspace holds), else the one ``--dataset`` names. A model trained on one
dataset never wins over another dataset's runs.
"""

from __future__ import annotations

import typer

from imgclust import config
from imgclust.errors import ParamError
from imgclust.tracking import runs, store


def data_version_to_rank(experiment: str, dataset: str | None) -> tuple[str, str]:
    """(data version, how it was chosen) for ``--best``: ``dataset`` when given, else the version in
    the project's dvc.lock, else the experiment's only one; ParamError when that leaves a choice."""
    if dataset:
        return store.match_dataset(experiment, dataset), f"dataset {dataset!r}"
    current = runs.dataset_of(store.project_root() / "dvc.lock")
    if current:
        return current["version"], f"the current data ({current['name']}, from dvc.lock)"
    versions = [v for v in store.run_datasets(experiment) if v]
    if len(versions) == 1:
        return versions[0], "the only dataset of the experiment"
    raise ParamError(
        "no dvc.lock with a data version here and the experiment's runs span "
        f"{len(versions)} data versions; pass --dataset NAME or --dataset DATA_VERSION (see imgclust compare)."
    )


def command(
    run_id: str = typer.Option(None, "--run", help="Run whose model to register."),
    best: str = typer.Option(
        None, help="Or: pick the finished run with the highest value of this metric (e.g. ari_test)."
    ),
    lowest: bool = typer.Option(False, help="With --best: lowest value wins (e.g. for an inertia)."),
    dataset: str = typer.Option(
        None,
        help="With --best: rank the runs of this dataset (name, data version or its first characters); "
        "default: the data version in dvc.lock.",
    ),
    name: str = typer.Option("imgclust", help="Registered model name."),
    alias: str = typer.Option("champion", help="Alias to point at the new version ('' for none)."),
    artifact: str = typer.Option("image_model", help="image_model (image paths in) or model (features in)."),
    experiment: str = typer.Option(
        None, help="Experiment searched by --best (default: mlflow.experiment_name of params.yaml)."
    ),
) -> None:
    if bool(run_id) == bool(best):
        raise ParamError("give exactly one of --run RUN_ID or --best METRIC.")
    if dataset and not best:
        raise ParamError("--dataset chooses among runs for --best; with --run the run decides the dataset.")
    uri, _ = store.configure()
    with store.tracking_errors(), store.store_lock(uri):
        chosen, scope = run_id, ""
        if best:
            name_of_experiment = store.experiment_name(experiment or config.experiment_name())
            version, how = data_version_to_rank(name_of_experiment, dataset)
            chosen = store.best_run_id(name_of_experiment, best, ascending=lowest, data_version=version)
            scope = f" (best {best} among the runs of {how}, data version {version[:12]})"
        version_info = store.register_model(chosen, name, alias or None, artifact)
        data = store.run_dataset(store.fetch_run(chosen))
    target = f"models:/{name}@{alias}" if alias else f"models:/{name}/{version_info.version}"
    typer.echo(f"register: run {chosen} -> {name} version {version_info.version} ({target}){scope}")
    if data:
        typer.echo(f"register: trained on dataset {data.get('name')} (source {data.get('source')})")
