"""Predict clusters for image files or folders with a registered model or a run's model."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from imgclust.errors import InputDataError, ParamError
from imgclust.fsutil import is_image_file, write_csv, write_json

OUTPUT_FIELDS = ("path", "cluster", "cluster_class", "error")


class Format(str, Enum):
    csv = "csv"
    json = "json"


def collect_images(inputs: list[Path], exclude: list[str]) -> list[Path]:
    """Image files named directly, or found recursively in folders (sorted), minus ``exclude`` globs."""
    import fnmatch

    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file() and is_image_file(p))
        elif item.exists():
            files.append(item)
        else:
            raise InputDataError(f"{item}: no such file or folder.")
    return [p for p in files if not any(fnmatch.fnmatchcase(p.name.lower(), pat.lower()) for pat in exclude)]


def model_run_id(model_uri: str) -> str | None:
    """The run that produced the model behind ``runs:/`` or ``models:/`` URIs."""
    import mlflow

    if model_uri.startswith("runs:/"):
        return model_uri.removeprefix("runs:/").split("/", 1)[0]
    if model_uri.startswith("models:/"):
        ref = model_uri.removeprefix("models:/")
        client = mlflow.MlflowClient()
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return client.get_model_version_by_alias(name, alias).run_id
        name, version = ref.rsplit("/", 1)
        return client.get_model_version(name, version).run_id
    return None


def cluster_classes(run_id: str | None) -> dict[int, str]:
    """The run's cluster -> most represented class mapping, if it logged one."""
    import mlflow

    from imgclust.evaluate import CLUSTER_CLASSES_ARTIFACT

    if not run_id:
        return {}
    try:
        mapping = mlflow.artifacts.load_dict(f"runs:/{run_id}/{CLUSTER_CLASSES_ARTIFACT}")
    except Exception:  # noqa: BLE001 - older runs or foreign models carry no mapping
        return {}
    return {int(k): v for k, v in mapping.items()}


def predict(model_uri: str, images: list[Path], batch_size: int = 64) -> list[dict]:
    """One row per image: cluster id and the class most represented in it, or the decoding error.

    Each image is decoded first, so a bad file is reported instead of failing the whole batch.
    """
    import mlflow
    from tqdm import tqdm

    from imgclust.errors import CorruptImageError
    from imgclust.images import open_image

    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # MLflow's type-hint advice, not the user's concern
            model = mlflow.pyfunc.load_model(model_uri)
    except mlflow.exceptions.MlflowException as exc:
        raise ParamError(f"cannot load model {model_uri!r}: {exc.message}") from None
    classes = cluster_classes(model_run_id(model_uri))
    rows: list[dict] = []
    with tqdm(total=len(images), desc="predict", unit="img", disable=None, leave=False) as bar:
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            good = []
            for path in batch:
                try:
                    open_image(path)
                    good.append(path)
                except CorruptImageError as exc:
                    rows.append({"path": str(path), "cluster": None, "cluster_class": None, "error": str(exc)})
            if good:
                import pandas as pd

                clusters = model.predict(pd.DataFrame({"path": [str(p) for p in good]}))
                rows += [{"path": str(p), "cluster": int(c), "cluster_class": classes.get(int(c)), "error": None}
                         for p, c in zip(good, clusters)]
            bar.update(len(batch))
    order = {str(p): i for i, p in enumerate(images)}
    return sorted(rows, key=lambda r: order[r["path"]])


def command(
    images: list[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively)."),
    model: str = typer.Option("models:/imgclust@champion", help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/image_model."),
    output: Path = typer.Option(Path("predictions.csv"), "--output", "-o", help="File to write."),
    fmt: Format = typer.Option(None, "--format", help="csv or json (default: from the output suffix)."),
    exclude: list[str] = typer.Option(["*_mask*"], help="File-name patterns to skip (repeatable)."),
    batch_size: int = typer.Option(64, help="Images per model call."),
) -> None:
    from imgclust import tracking

    tracking.configure()
    files = collect_images(images, exclude)
    if not files:
        raise InputDataError(f"no image file in {', '.join(map(str, images))}.")
    rows = predict(model, files, batch_size)
    fmt = fmt or (Format.json if output.suffix.lower() == ".json" else Format.csv)
    if fmt is Format.json:
        write_json(output, rows)
    else:
        write_csv(output, rows, OUTPUT_FIELDS)
    bad = [r for r in rows if r["error"]]
    typer.echo(f"predict: {len(rows) - len(bad)} image(s) clustered, {len(bad)} unreadable -> {output}")
    for row in bad:
        typer.secho(f"  {row['error']}", err=True, fg=typer.colors.YELLOW)
    if len(bad) == len(rows):
        raise typer.Exit(code=2)
