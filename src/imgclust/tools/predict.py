"""Predict clusters for image files or folders with a registered model or a run's model."""

from __future__ import annotations

import os
import stat
from enum import Enum
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import typer

from imgclust.core.fsutil import file_kind, is_image_file, not_regular_reason, write_csv, write_json
from imgclust.core.image_profile import differences
from imgclust.core.images import load_array, open_image
from imgclust.core.packs import is_pack
from imgclust.errors import CorruptImageError, InputDataError, ParamError
from imgclust.tracking import store
from imgclust.tracking.naming import TRAINING_IMAGES_ARTIFACT

# cluster_class: the class most represented in the cluster (train images); cluster_class_share: its
# share there; cluster_classes: every class's share; warnings: how the image differs from the
# training images (size, mode, pixel statistics)
OUTPUT_FIELDS = ("path", "cluster", "cluster_class", "cluster_class_share", "cluster_classes", "warnings", "error")
EMPTY = {"cluster": None, "cluster_class": None, "cluster_class_share": None, "cluster_classes": None, "warnings": None}
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
        if is_pack(item):
            raise InputDataError(
                f"{item}: a packed dataset (tar shards and an index), not a folder of images; export its "
                f"images first: imgclust export {item} -o FOLDER, then predict FOLDER."
            )
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


def load_labelled_model(model_uri: str, trust: bool) -> tuple:
    """(model, its run id, cluster -> majority class, cluster -> class shares) of ``model_uri``,
    checked first (see ``check_model_uri``)."""
    check_model_uri(model_uri, trust)
    model = store.load_model(model_uri)  # first: its error is the clear one for a missing model
    run_id = store.model_run_id(model_uri)
    return model, run_id, store.cluster_classes(run_id), store.cluster_class_shares(run_id)


def predict_on_ray(model_uri: str, images: list, settings, *, trust: bool = False) -> list[dict]:
    """``predict`` with the model's loader and extractor run by Ray actors (``core.ray_engine``):
    local files are read on this machine and streamed to them; ``s3://`` objects are read by them."""
    from imgclust.core import ray_engine

    check_model_uri(model_uri, trust)
    ray_engine.import_ray()
    model, _, classes, shares = load_labelled_model(model_uri, trust)
    rows: dict[str, dict] = {}
    readable = []
    for item in images:
        reason = None if str(item).startswith(ray_engine.S3_PREFIX) else not_a_regular_file(Path(item))
        if reason:
            rows[str(item)] = {"path": str(item), **EMPTY, "error": reason}
        else:
            readable.append(str(item))
    pipeline = model.unwrap_python_model().pipeline
    # images are decoded by the workers only: no comparison with the training images here (warnings empty)
    for item, cluster, error in ray_engine.predict(pipeline, readable, settings):
        if cluster is None:
            rows[item] = {"path": item, **EMPTY, "error": error}
        else:
            rows[item] = cluster_row(item, cluster, classes, shares, [])
    return [rows[str(item)] for item in images]


def image_warnings(path: Path, profile: dict) -> list[str]:
    """Decode ``path`` (CorruptImageError when it cannot be) and say how it differs from the training
    images of ``profile`` (none without a profile)."""
    image = open_image(path)
    model_input = profile.get("model_input")
    if not model_input:
        return []
    size = (int(model_input["width"]), int(model_input["height"]))
    array = load_array(path, str(model_input["color_mode"]), size, str(model_input["resample"]))
    return differences(profile, image.size[0], image.size[1], image.mode, array)


def describe_model(model_uri: str) -> str:
    """Which run a model comes from and the data it was trained on."""
    run_id = store.model_run_id(model_uri)
    if not run_id:
        return f"model {model_uri} (no run in the store: its training data is unknown)"
    try:
        run = store.fetch_run(run_id)
    except ParamError:  # a model whose run is not in this store (copied, or the run deleted)
        return f"model {model_uri} (run {run_id} is not in the store: its training data is unknown)"
    data = store.run_dataset(run)
    trained = (
        f"trained on dataset {data['name']} (data version {data.get('version', '?')[:12]}, source {data.get('source')})"
        if data.get("name")
        else "trained on data it did not record (logged before datasets were)"
    )
    return f"model {model_uri} = run {run_id} ({run.info.run_name}), {trained}"


def cluster_row(path: str, cluster: int, classes: dict, shares: dict, warnings: list[str]) -> dict:
    """The output row of an image assigned to ``cluster``: its majority class and the class shares."""
    cluster_shares = shares.get(cluster, {})
    return {
        "path": path,
        "cluster": cluster,
        "cluster_class": classes.get(cluster),
        "cluster_class_share": cluster_shares.get(classes.get(cluster)),
        "cluster_classes": "; ".join(f"{c} {v:.2f}" for c, v in cluster_shares.items()) or None,
        "warnings": "; ".join(warnings) or None,
        "error": None,
    }


def predict(model_uri: str, images: list[Path], batch_size: int = 64, *, trust: bool = False) -> list[dict]:
    """One row per image: cluster id and the class most represented in it, or why it was not read.

    Each image is checked (regular file) and decoded first, so a bad file is reported instead of
    failing (or, for a FIFO, blocking) the whole batch. ``model_uri`` must be a models:/ or runs:/
    URI of the tracking store unless ``trust`` (see ``check_model_uri``).
    """
    import pandas as pd
    from tqdm import tqdm

    model, run_id, classes, shares = load_labelled_model(model_uri, trust)
    profile = store.run_dict(run_id, TRAINING_IMAGES_ARTIFACT)
    notes: dict[str, list[str]] = {}
    rows: list[dict] = []
    with tqdm(total=len(images), desc="predict", unit="img", disable=None, leave=False) as bar:
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            good = []
            for path in batch:
                reason = not_a_regular_file(path)
                if reason:
                    rows.append({"path": str(path), **EMPTY, "error": reason})
                    continue
                try:
                    notes[str(path)] = image_warnings(path, profile)
                    good.append(path)
                except CorruptImageError as exc:
                    rows.append({"path": str(path), **EMPTY, "error": str(exc)})
            if good:
                clusters = model.predict(pd.DataFrame({"path": [str(p) for p in good]}))
                for path, cluster in zip(good, clusters):
                    rows.append(cluster_row(str(path), int(cluster), classes, shares, notes[str(path)]))
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
        rows = predict(model, files, batch_size, trust=trust)  # fails first, and clearly, on a missing model
    with store.tracking_errors():
        typer.echo(f"predict: {describe_model(model)}")
    fmt = fmt or (Format.json if output.suffix.lower() == ".json" else Format.csv)
    if fmt is Format.json:
        write_json(output, rows)
    else:
        write_csv(output, rows, OUTPUT_FIELDS)
    bad = [r for r in rows if r["error"]]
    typer.echo(f"predict: {len(rows) - len(bad)} image(s) clustered, {len(bad)} unreadable -> {output}")
    for row in bad:
        typer.secho(f"  {row['error']}", err=True, fg=typer.colors.YELLOW)
    unlike = [r for r in rows if r["warnings"]]
    if unlike:
        typer.secho(
            f"warning: {len(unlike)} of {len(rows) - len(bad)} image(s) differ from the images the model was "
            f"trained on, so their clusters may mean little (column 'warnings' of {output}); e.g. "
            f"{unlike[0]['path']}: {unlike[0]['warnings']}",
            err=True,
            fg=typer.colors.YELLOW,
        )
    if len(bad) == len(rows):
        raise typer.Exit(code=2)
