"""Compare the MLflow runs of the project's store: a sortable, filterable table."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from imgclust import config
from imgclust.errors import ParamError
from imgclust.tracking import store
from imgclust.tracking.naming import (
    DATA_VERSION_TAG,
    DATASET_TAG,
    DVC_ENV_TAGS,
    METRIC_ALIASES,
    metric_column,
    metric_name,
    param_column,
)

# column title -> MLflow field of search_runs' DataFrame
COLUMNS = {
    "run": "run_id",
    "started_utc": "start_time",
    "dvc_exp": f"tags.{DVC_ENV_TAGS['DVC_EXP_NAME']}",
    "dataset": f"tags.{DATASET_TAG}",
    "data_version": f"tags.{DATA_VERSION_TAG}",
    "method": param_column("featurize.method"),
    "backbone": param_column("featurize.cnn.backbone"),
    "protocol": param_column("protocol"),
    "n_clusters": param_column("train.kmeans.n_clusters"),
    "n_components": param_column("train.pca.n_components"),
    **{title: metric_column(METRIC_ALIASES[title]) for title in ("ari_train", "ari_test", "nmi_test", "acc_test")},
}


DATA_VERSION_SHOWN = 8  # characters of the data version in the table (as git shows commits)


class Format(str, Enum):
    table = "table"
    csv = "csv"
    markdown = "markdown"
    json = "json"


def runs_table(
    experiment_name: str,
    filter_string: str = "",
    sort: str = "ari_test",
    ascending: bool = False,
    limit: int | None = None,
    include_unfinished: bool = False,
    dataset: str | None = None,
):
    """A pandas DataFrame of the pipeline runs of ``experiment_name``, one row per run; only runs
    that finished unless ``include_unfinished``; only those of ``dataset`` (a dataset name, or a
    data version or its first characters) when given."""
    import pandas as pd

    sort_column = (
        sort
        if sort in COLUMNS
        else next((title for title, field in COLUMNS.items() if field == metric_column(metric_name(sort))), None)
    )
    if sort_column is None:
        raise ParamError(f"cannot sort by {sort!r}; use one of {', '.join(COLUMNS)}.")
    runs = store.pipeline_runs(experiment_name, filter_string, include_unfinished)
    table = pd.DataFrame({title: runs[field] if field in runs else None for title, field in COLUMNS.items()})
    if dataset:
        versions = table["data_version"].fillna("").astype(str)
        table = table[(table["dataset"] == dataset) | (versions.str.startswith(dataset) & (versions != ""))].copy()
    if len(table):
        table["data_version"] = table["data_version"].map(lambda v: v[:DATA_VERSION_SHOWN] if isinstance(v, str) else v)
        table["started_utc"] = pd.to_datetime(table["started_utc"]).dt.strftime("%Y-%m-%d %H:%M:%S")
        table.loc[table["method"] != "cnn", "backbone"] = None  # only meaningful for CNN features
    table = table.sort_values(sort_column, ascending=ascending, na_position="last", kind="stable")
    return table.head(limit) if limit else table.reset_index(drop=True)


def render(table, fmt: Format) -> str:
    if fmt is Format.csv:
        return table.to_csv(index=False)
    if fmt is Format.json:
        return table.to_json(orient="records", date_format="iso", indent=2)
    if fmt is Format.markdown:
        return _markdown(table)
    return table.fillna("").to_string(index=False, float_format=lambda v: f"{v:.4f}")


def _markdown(table) -> str:
    def cell(value) -> str:
        if value is None or value != value:
            return ""
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def command(
    experiment: str = typer.Option(None, help="MLflow experiment (default: mlflow.experiment_name of params.yaml)."),
    sort: str = typer.Option("ari_test", help=f"Column or metric to sort by: {', '.join(COLUMNS)}."),
    ascending: bool = typer.Option(False, "--ascending", help="Sort ascending (default: descending)."),
    filter_string: str = typer.Option("", "--filter", help="MLflow filter, e.g. \"params.featurize.method = 'cnn'\"."),
    limit: int = typer.Option(0, help="Show at most this many runs (0: all)."),
    include_unfinished: bool = typer.Option(False, "--all", help="Include failed and running runs."),
    dataset: str = typer.Option(
        None, help="Only runs of this dataset: its name or a data version (first characters suffice)."
    ),
    fmt: Format = typer.Option(Format.table, "--format", help="Output format."),
    output: Path = typer.Option(None, "--output", "-o", help="Write to this file instead of the terminal."),
) -> None:
    store.configure()
    with store.tracking_errors():
        table = runs_table(
            store.experiment_name(experiment or config.experiment_name()),
            filter_string,
            sort,
            ascending,
            limit or None,
            include_unfinished,
            dataset,
        )
    if not len(table) and fmt is Format.table:
        typer.echo("compare: no pipeline run matches" + (f" dataset {dataset!r}" if dataset else ""))
        return
    text = render(table, fmt)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        typer.echo(f"compare: wrote {output}")
    else:
        typer.echo(text)
