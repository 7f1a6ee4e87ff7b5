"""Stage evaluate: score the clustering against the classes, draw the plots, and record the run in
MLflow with the parameters every stage recorded in dvc.lock."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import typer

from imgclust import config
from imgclust.core import image_profile, plots, progress, stage_log
from imgclust.core.clustering import evaluate_model, one_thread
from imgclust.core.feature_store import load_features
from imgclust.core.fsutil import read_csv, write_csv, write_json
from imgclust.core.metrics import cluster_class_mapping
from imgclust.core.parallel import release_pages
from imgclust.errors import InputDataError
from imgclust.tracking import naming, runs

# the keys of params.yaml this stage reads: its `params` in dvc.yaml, and all it may read
PARAMS = ("evaluate", "mlflow", "resize.resample")

PREDICTION_FIELDS = ("file", "class", "split", "op", "cluster")
LOCK_FILE = Path("dvc.lock")
PROFILE_IMAGES = 5000  # at most this many originals are read for the training-image profile
PAGE_RELEASE_ROWS = 256  # feature rows read between releases of the mapped pages
# MLflow tag of a run whose metrics are undefined or trivial (one class, one cluster): its warnings


def metric_warnings(result: dict) -> list[str]:
    """What makes a split's metrics undefined or trivial: a single class (every external score then
    compares against one label: ARI is 1.0 for one cluster and 0.0 for more, whatever the images),
    a single cluster (nothing is separated; silhouette is undefined), or a metric that is NaN."""
    found = []
    for split, values in result["metrics"].items():
        rows = result["rows"][split]
        classes = sorted(set(result["labels"][rows].tolist()))
        n = values["n_samples"]
        if len(classes) < 2:
            found.append(
                f"{split}: all {n} images are of one class ({classes[0]!r}): ARI, NMI, AMI and accuracy "
                f"are trivial (ARI {values['ari']:.4f}) and say nothing about the clustering; "
                "add images of the other classes"
            )
        if values["n_clusters_found"] < 2:
            found.append(
                f"{split}: all {n} images fall in one cluster: the clustering separates nothing and "
                "silhouette is undefined"
            )
        undefined = [
            k
            for k, v in values.items()
            if isinstance(v, float) and v != v and not (k == "silhouette" and values["n_clusters_found"] < 2)
        ]
        if undefined:
            found.append(
                f"{split}: {', '.join(undefined)} undefined (NaN; written as null)"
                + (": every image is its own cluster" if values["n_clusters_found"] >= n else "")
            )
    return found


def auto_k_metrics(auto_k: dict) -> dict:
    """The chosen k and the criterion per k tried, as metrics: {"k": 3, "silhouette_k2": ...}."""
    curve = {f"{auto_k['criterion']}_k{k}": (None if v != v else v) for k, v in auto_k["curve"].items()}
    return {"k": auto_k["k"], **curve}


def cluster_classes(result: dict) -> dict[str, str]:
    """The class most represented in each cluster among TRAIN rows (JSON keys are strings)."""
    train = result["splits"] == "train"
    mapping = cluster_class_mapping(result["clusters"][train], result["labels"][train])
    return {str(cluster): cls for cluster, cls in mapping.items()}


def cluster_class_shares(result: dict) -> dict[str, dict[str, float]]:
    """Each cluster's share of every class among its TRAIN rows, largest first (JSON keys are strings)."""
    train = result["splits"] == "train"
    clusters, labels = result["clusters"][train], result["labels"][train]
    shares = {}
    for cluster in sorted(set(clusters.tolist())):
        classes, counts = np.unique(labels[clusters == cluster], return_counts=True)
        order = sorted(zip(classes.tolist(), counts.tolist()), key=lambda item: (-item[1], item[0]))
        shares[str(cluster)] = {cls: round(n / counts.sum(), 4) for cls, n in order}
    return shares


def dataset_profiles(index: list[dict], meta: dict) -> dict[str, dict]:
    """The profile of each dataset input (train, test): images per class, originals and copies."""
    profiles = {}
    for context in naming.DATASET_CONTEXTS:
        rows = [r for r in index if r["split"] == context]
        if not rows:
            continue
        per_class: dict[str, int] = {}
        for r in rows:
            per_class[r["class"]] = per_class.get(r["class"], 0) + 1
        copies = sum(r["op"] != "none" for r in rows)
        profiles[context] = {
            "images": len(rows),
            "originals": len(rows) - copies,
            "augmented_copies": copies,
            "images_per_class": dict(sorted(per_class.items())),
            "image_shape": meta["image_shape"],
            "color_mode": meta["color_mode"],
        }
    return profiles


def training_images(
    index: list[dict], images: Path, raw_manifest: Path | None, meta: dict, resample: str, features=None
) -> dict[str, object]:
    """``image_profile.training_profile`` of the original images (no augmented copies), for predict.
    Pixel ``features`` are these images already: their rows are used instead of decoding the pack."""
    import io

    from PIL import Image

    from imgclust.core.packs import open_pack

    originals = [(i, r) for i, r in enumerate(index) if r["op"] == "none"]
    originals = originals[:: -(-len(originals) // PROFILE_IMAGES)]  # an even sample of a large set
    if features is not None and meta["method"] == "pixels":
        arrays = _feature_images(features, [i for i, _ in originals], tuple(meta["image_shape"]))
    else:
        pack = open_pack(images, producer="augment")
        arrays = (np.asarray(Image.open(io.BytesIO(pack.read(r["file"])))) for _, r in originals)
    originals = [r for _, r in originals]
    used = {r["source"] for r in originals}
    raw_rows = [r for r in read_csv(raw_manifest) if r["path"] in used] if raw_manifest else []
    height, width = meta["image_shape"][:2]
    model_input = {"width": width, "height": height, "color_mode": meta["color_mode"], "resample": resample}
    return image_profile.training_profile(arrays, raw_rows, model_input)


def _feature_images(features, rows: list[int], shape: tuple[int, ...]):
    """Each of ``rows`` of memory-mapped pixel ``features`` as an image, copied out and its pages let
    go batch by batch: the kernel maps a large file's pages in whole folios, so reading a sample of
    rows spread over the file would otherwise hold most of it resident (3.5 GB at 100,000 images)."""
    for n, row in enumerate(rows, 1):
        yield np.array(features[row]).reshape(shape)
        if n % PAGE_RELEASE_ROWS == 0:
            release_pages(features)
    release_pages(features)


def describe_run(params: dict, dataset: dict | None) -> str:
    """The run's name from what dvc.lock recorded (see ``naming.run_name``)."""
    featurize = params.get("featurize", {})
    cnn = featurize.get("cnn", {})
    return naming.run_name(
        dataset["name"] if dataset else None,
        naming.features_label(featurize.get("method", "?"), cnn.get("backbone"), cnn.get("alpha")),
        params.get("train", {}).get("kmeans", {}).get("n_clusters"),
        params.get("protocol"),
    )


def own_params(params: config.PipelineParams) -> dict:
    """The keys this stage reads (dvc.yaml lists exactly these)."""
    return {
        "evaluate": params.evaluate.model_dump(),
        "mlflow": params.mlflow.model_dump(),
        "resize": {"resample": params.resize.resample},
    }


def logged_params(params: config.PipelineParams, lock_file: Path) -> dict:
    """What the run logs: the parameters every stage recorded in dvc.lock, with this stage's own."""
    merged = runs.dvc_lock_params(lock_file)
    for key, value in naming.flatten(own_params(params)).items():
        naming.set_dotted(merged, key, value)
    return merged


def run(
    features_dir: Path,
    model_path: Path,
    images: Path,
    metrics_path: Path,
    plots_dir: Path,
    predictions_path: Path,
    run_info: Path,
    reports: list[Path],
    params: config.PipelineParams,
    mlflow_log: bool = True,
    raw_manifest: Path | None = None,
) -> dict:
    """Write metrics, predictions and plots; log the run to MLflow and write its id to ``run_info``."""
    import joblib

    if not model_path.is_file():
        raise InputDataError(f"{model_path}: not found; run the train stage (dvc repro train).")
    # MLflow is imported by a helper process meanwhile (runs.RunLogger)
    with runs.RunLogger() if mlflow_log else contextlib.nullcontext() as logger:
        steps = progress.Steps("evaluate", 4 if mlflow_log else 2)
        steps.step("score")
        pipeline = joblib.load(model_path)
        features, index, meta = load_features(features_dir)
        result = evaluate_model(pipeline, features, index)
        metrics = result["metrics"]
        warnings = metric_warnings(result)
        clusters = result["clusters"]
        # plots first: should one fail, metrics.json and predictions.csv still hold the last good run's
        steps.step("plots")
        test_rows = result["splits"] == "test"
        shown = test_rows if test_rows.any() else np.ones(len(index), bool)
        plots.plot_contingency(
            clusters[shown],
            result["labels"][shown],
            plots_dir / "contingency.png",
            title=f"Clusters x classes ({'test' if test_rows.any() else 'all'} images)",
        )
        with one_thread():  # a PCA(2) of the features when the model has none: thread-count independent too
            coordinates = plots.scatter_coordinates(result["embedding"], "pca" in pipeline.named_steps)
        pca = pipeline.named_steps.get("pca")
        plots.plot_scatter(
            coordinates,
            clusters,
            result["labels"],
            plots_dir / "scatter.png",
            title="Images in the clustering space (all splits)",
            axis_labels=plots.scatter_axis_labels(
                pca is not None, [float(v) for v in getattr(pca, "explained_variance_ratio_", [])]
            ),
        )
        thumbs, captions, copies = plots.thumbnails_with_copies(index, clusters, images, params.evaluate.thumbnails)
        sizes = {int(c): int(n) for c, n in zip(*np.unique(clusters, return_counts=True))}
        plots.plot_thumbnails(
            thumbs,
            plots_dir / "thumbnails.png",
            captions,
            title="Sample images per cluster (orange frame: augmented copy; row: copies, majority class share)",
            cluster_sizes=sizes,
            row_notes=plots.cluster_notes(index, clusters),
            copies_by_cluster=copies,
        )
        # NaN (e.g. silhouette of a single cluster) is not JSON; DVC reads null as missing
        document = {split: {k: (None if v != v else v) for k, v in values.items()} for split, values in metrics.items()}
        auto_k = getattr(pipeline.steps[-1][1], "auto_k_", None)
        if auto_k:  # train.kmeans.n_clusters: auto: the chosen k and the criterion's curve over k
            document["auto_k"] = auto_k_metrics(auto_k)
        write_json(metrics_path, document)
        write_csv(
            predictions_path,
            (
                {"file": r["file"], "class": r["class"], "split": r["split"], "op": r["op"], "cluster": int(c)}
                for r, c in zip(index, clusters)
            ),
            PREDICTION_FIELDS,
        )
        if not mlflow_log:
            steps.close()
            return {"metrics": metrics, "warnings": warnings}
        steps.step("profile the training images")

        summary = {"features": meta, "reports": {}, "metric_warnings": warnings}
        if auto_k:
            summary["auto_k"] = {**auto_k, "curve": {str(k): v for k, v in auto_k["curve"].items()}}
        for report in reports:
            if report.is_file():
                summary["reports"][report.stem] = json.loads(report.read_text())
        # imported here: scikit-learn costs seconds, which the CLI should not pay at import
        from imgclust.core.extractors import ImageLoader, image_pipeline, make_extractor

        # decode new images exactly as the training images were: their size and mode come from the
        # features themselves, the resampling filter from the resize parameters
        height, width = meta["image_shape"][:2]
        loader = ImageLoader(width, height, meta["color_mode"], params.resize.resample)
        extractor = make_extractor(meta["method"], meta["extractor"])
        test_index = [i for i, r in enumerate(index) if r["split"] == "test"] or list(range(len(index)))
        weights = meta["extractor"].get("weights")
        tags = runs.pipeline_tags(meta["method"], Path.cwd(), LOCK_FILE)
        if warnings:
            tags[naming.METRIC_WARNINGS_TAG] = "; ".join(warnings)[: naming.TAG_VALUE_LIMIT]
        run_params = logged_params(params, LOCK_FILE)
        dataset = runs.dataset_of(LOCK_FILE)
        # the stages DVC ran for this pipeline run (side file), and this one up to now
        profile = training_images(index, images, raw_manifest, meta, params.resize.resample, features)
        steps.step("log the run and its models to MLflow")
        timings = {**stage_log.read(), "evaluate": stage_log.measure("evaluate")}
        run_metrics = {**naming.split_metrics(document), **naming.stage_metrics(timings)}
        profiles = dataset_profiles(index, meta)
        name = describe_run(run_params, dataset)
        tags[naming.RUN_DESCRIPTION_TAG] = naming.run_description(name, dataset, profiles, run_metrics)
        info = logger.log_run(
            experiment=params.mlflow.experiment_name,
            params=run_params,
            metrics=run_metrics,
            run_name=name,
            dataset=dataset,
            dataset_profiles=profiles,
            extra_dicts={
                naming.CLUSTER_SHARES_ARTIFACT: cluster_class_shares(result),
                naming.TRAINING_IMAGES_ARTIFACT: profile,
            },
            tags=tags,
            artifacts=[plots_dir, metrics_path, predictions_path],
            summary=summary,
            cluster_classes=cluster_classes(result),
            model=pipeline,
            model_input_example=np.asarray(features[test_index[:2]]),
            image_pipeline=image_pipeline(loader, extractor, pipeline),
            weights_file=weights if weights and Path(str(weights)).is_file() else None,
        )
        write_json(run_info, info)
        stage_log.consume()
        steps.close()
        return {"metrics": metrics, "warnings": warnings, "run": info, "run_name": name}


def command(
    features_dir: Path = typer.Option(..., "--features", help="Feature store folder."),
    model_path: Path = typer.Option(..., "--model", help="Fitted pipeline."),
    images: Path = typer.Option(..., help="Images the features came from (thumbnails)."),
    metrics_path: Path = typer.Option(..., "--metrics", help="DVC metrics file."),
    plots_dir: Path = typer.Option(..., "--plots", help="Folder of PNG plots."),
    predictions_path: Path = typer.Option(..., "--predictions", help="Per-image clusters."),
    run_info: Path = typer.Option(..., help="Where to record the MLflow run id."),
    reports: list[Path] = typer.Option([], "--report", help="Stage reports to summarise in MLflow (repeatable)."),
    mlflow_log: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Record the run in MLflow."),
    raw_manifest: Path = typer.Option(
        None, help="ingest's manifest: sizes and modes of the originals, recorded for predict's checks."
    ),
) -> None:
    result = run(
        features_dir,
        model_path,
        images,
        metrics_path,
        plots_dir,
        predictions_path,
        run_info,
        reports,
        config.load(PARAMS),
        mlflow_log,
        raw_manifest,
    )
    for split, values in result["metrics"].items():
        typer.echo(
            f"evaluate {split}: ARI {values['ari']:.4f}  NMI {values['nmi']:.4f}  "
            f"accuracy {values['cluster_accuracy']:.4f}  (n={values['n_samples']})"
        )
    for warning in result["warnings"]:
        typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)
    if "run" in result:
        info = result["run"]
        typer.echo(
            f"mlflow: run {info['run_id']} ({result['run_name']}) in experiment {info['experiment_id']} "
            f"at {info['tracking_uri']}"
        )
