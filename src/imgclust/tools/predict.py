"""Predict clusters for image files or folders with a registered model or a run's model."""

from __future__ import annotations

import os
import stat
from enum import Enum
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import typer

from imgclust.core.fsutil import file_kind, is_image_file, not_regular_reason, write_csv, write_json
from imgclust.core.images import open_image
from imgclust.errors import CorruptImageError, InputDataError, ParamError
from imgclust.tracking import store

OUTPUT_FIELDS = ("path", "cluster", "cluster_class", "error")
# model URIs resolved against the configured tracking store / registry: loaded without --trust
STORE_SCHEMES = ("models", "runs")


class Format(str, Enum):
    csv = "csv"
    json = "json"


def collect_images(inputs: list[Path], exclude: list[str]) -> list[Path]:
    """Image files named directly, or found recursively in folders (sorted), minus ``exclude`` globs.

    Entries are listed, never opened: one that is not a regular file (a FIFO, socket or device
    named like an image) is kept, for ``predict`` to report instead of reading it.
    """
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if is_image_file(p) and not _is_folder(p))
        elif item.exists():
            files.append(item)
        else:
            raise InputDataError(f"{item}: no such file or folder.")
    return [p for p in files if not _excluded(p, exclude)]


def _excluded(path, exclude: list[str]) -> bool:
    import fnmatch

    name = str(path).rsplit("/", 1)[-1].lower()
    return any(fnmatch.fnmatchcase(name, pat.lower()) for pat in exclude)


def _is_folder(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def not_a_regular_file(path: Path) -> str | None:
    """Why ``path`` is not read (a FIFO would block its reader forever, a device may act on being
    opened), or None for a regular file (also through a symbolic link). Decided by ``stat`` alone."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"{path}: cannot be read ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    return f"{path}: {not_regular_reason(file_kind(mode))}"


def check_model_uri(model_uri: str, trust: bool = False) -> None:
    """Refuse (ParamError) to load a model from anywhere but the configured tracking store or
    registry unless ``trust``: loading a model folder unpickles its objects, which runs their code."""
    parts = urlsplit(model_uri)
    in_store = (
        parts.scheme in STORE_SCHEMES
        and not parts.netloc
        and model_uri.startswith(f"{parts.scheme}:/")
        and ".." not in PurePosixPath(parts.path).parts
    )
    if in_store or trust:
        return
    raise ParamError(
        f"refusing to load model {model_uri!r}: it is not a models:/ or runs:/ URI of the tracking store. "
        "Loading a model from a folder, file or other location unpickles whatever it holds, which can run "
        "any code. Use models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/image_model (resolved against "
        "the project's store, or MLFLOW_TRACKING_URI), or pass --trust if you trust whoever wrote that model."
    )


class Engine(str, Enum):
    local = "local"
    ray = "ray"


def from_argument(item: Path) -> Path | str:
    """A command-line input as given: an ``s3://`` URI (which Path turned into ``s3:/``) stays a string."""
    text = str(item)
    return f"s3://{text[len('s3:/') :]}" if text.startswith("s3:/") and not text.startswith("s3://") else item


def predict_on_ray(model_uri: str, images: list, settings, *, trust: bool = False) -> list[dict]:
    """``predict`` with the model's loader and extractor run by Ray actors (``core.ray_engine``):
    local files are read on this machine and streamed to them; ``s3://`` objects are read by them."""
    from imgclust.core import ray_engine

    check_model_uri(model_uri, trust)
    ray_engine.import_ray()
    model = store.load_model(model_uri)
    classes = store.cluster_classes(store.model_run_id(model_uri))
    rows: dict[str, dict] = {}
    readable = []
    for item in images:
        reason = None if str(item).startswith(ray_engine.S3_PREFIX) else not_a_regular_file(Path(item))
        if reason:
            rows[str(item)] = {"path": str(item), "cluster": None, "cluster_class": None, "error": reason}
        else:
            readable.append(str(item))
    pipeline = model.unwrap_python_model().pipeline
    for item, cluster, error in ray_engine.predict(pipeline, readable, settings):
        cluster_class = None if cluster is None else classes.get(cluster)
        rows[item] = {"path": item, "cluster": cluster, "cluster_class": cluster_class, "error": error}
    return [rows[str(item)] for item in images]


def predict(model_uri: str, images: list[Path], batch_size: int = 64, *, trust: bool = False) -> list[dict]:
    """One row per image: cluster id and the class most represented in it, or why it was not read.

    Each image is checked (regular file) and decoded first, so a bad file is reported instead of
    failing (or, for a FIFO, blocking) the whole batch. ``model_uri`` must be a models:/ or runs:/
    URI of the tracking store unless ``trust`` (see ``check_model_uri``).
    """
    import pandas as pd
    from tqdm import tqdm

    check_model_uri(model_uri, trust)
    model = store.load_model(model_uri)
    classes = store.cluster_classes(store.model_run_id(model_uri))
    rows: list[dict] = []
    with tqdm(total=len(images), desc="predict", unit="img", disable=None, leave=False) as bar:
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            good = []
            for path in batch:
                reason = not_a_regular_file(path)
                if reason:
                    rows.append({"path": str(path), "cluster": None, "cluster_class": None, "error": reason})
                    continue
                try:
                    open_image(path)
                    good.append(path)
                except CorruptImageError as exc:
                    rows.append({"path": str(path), "cluster": None, "cluster_class": None, "error": str(exc)})
            if good:
                clusters = model.predict(pd.DataFrame({"path": [str(p) for p in good]}))
                rows += [
                    {"path": str(p), "cluster": int(c), "cluster_class": classes.get(int(c)), "error": None}
                    for p, c in zip(good, clusters)
                ]
            bar.update(len(batch))
    order = {str(p): i for i, p in enumerate(images)}
    return sorted(rows, key=lambda r: order[r["path"]])


def command(
    images: list[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively)."),
    model: str = typer.Option(
        "models:/imgclust@champion",
        help="models:/NAME@ALIAS, models:/NAME/VERSION or "
        "runs:/RUN_ID/image_model of the tracking store; any other location needs --trust.",
    ),
    output: Path = typer.Option(..., "--output", "-o", help="File to write (.csv or .json)."),
    fmt: Format = typer.Option(None, "--format", help="csv or json (default: from the output suffix)."),
    exclude: list[str] = typer.Option(["*_mask*"], help="File-name patterns to skip (repeatable)."),
    batch_size: int = typer.Option(64, help="Images per model call."),
    trust: bool = typer.Option(
        False,
        "--trust",
        help="Load --model from a folder, file or other location: "
        "loading unpickles its code, so only for a model you trust.",
    ),
    engine: Engine = typer.Option(
        Engine.local, help="local, or ray: the CNN runs on Ray actors (RAY_ADDRESS's cluster, or a local Ray)."
    ),
    actors: int = typer.Option(2, min=1, help="--engine ray: number of actors."),
    gpus_per_actor: float = typer.Option(0.0, min=0.0, help="--engine ray: GPUs per actor."),
) -> None:
    check_model_uri(model, trust)
    store.configure()
    inputs = [from_argument(item) for item in images]
    remote = [str(item) for item in inputs if isinstance(item, str)]
    if remote and engine is not Engine.ray:
        raise ParamError(f"{remote[0]}: s3:// inputs are read by Ray workers; add --engine ray.")
    files = collect_images([item for item in inputs if isinstance(item, Path)], exclude)
    if remote:
        from imgclust.core.ray_engine import list_s3_images

        for uri in remote:
            files += [u for u in list_s3_images(uri, lambda key: is_image_file(Path(key))) if not _excluded(u, exclude)]
    if not files:
        raise InputDataError(f"no image file in {', '.join(map(str, images))}.")
    if engine is Engine.ray:
        from imgclust.core.ray_engine import RaySettings

        settings = RaySettings(num_actors=actors, num_gpus=gpus_per_actor, batch_size=batch_size)
        rows = predict_on_ray(model, files, settings, trust=trust)
    else:
        rows = predict(model, files, batch_size, trust=trust)
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
