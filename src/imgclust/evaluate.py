"""Score the clustering against the classes, draw the plots, and record the run in MLflow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from imgclust.errors import InputDataError
from imgclust.featurize import load_features
from imgclust.fsutil import write_csv, write_json

PREDICTION_FIELDS = ("file", "class", "split", "op", "cluster")
CLUSTER_CLASSES_ARTIFACT = "cluster_classes.json"


def evaluate_model(pipeline, features: np.ndarray, index: list[dict], *, random_state: int = 0) -> dict:
    """Cluster every row and score train and test rows separately.

    Test rows are the split's test images: originals only in the honest protocol; in the tutorial
    protocol they include augmented copies, exactly as the seed recipe scored them.
    """
    from imgclust.metrics import clustering_metrics
    from imgclust.train import embed

    embedding = embed(pipeline, features)
    clusters = pipeline.steps[-1][1].predict(embedding)
    labels = np.array([row["class"] for row in index])
    splits = np.array([row["split"] for row in index])
    metrics = {}
    for split in ("train", "test"):
        rows = splits == split
        if rows.any():
            metrics[split] = clustering_metrics(clusters[rows], labels[rows], embedding[rows],
                                                random_state=random_state)
    return {"clusters": clusters, "embedding": embedding, "labels": labels, "splits": splits, "metrics": metrics}


def cluster_classes(result: dict) -> dict[str, str]:
    """The class most represented in each cluster among TRAIN rows (JSON keys are strings)."""
    from imgclust.metrics import cluster_class_mapping

    train = result["splits"] == "train"
    mapping = cluster_class_mapping(result["clusters"][train], result["labels"][train])
    return {str(cluster): cls for cluster, cls in mapping.items()}


def scatter_coordinates(embedding: np.ndarray, has_pca: bool) -> np.ndarray:
    """2-D view: the first two PCA components when the model has PCA, else a PCA(2) of the features."""
    if has_pca and embedding.shape[1] >= 2:
        return embedding[:, :2]
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=0).fit_transform(embedding)


def thumbnails_by_cluster(index: list[dict], clusters: np.ndarray, image_dir: Path, per_cluster: int,
                          seed: int = 0) -> tuple[dict[int, list[np.ndarray]], dict[int, list[str]]]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    images: dict[int, list[np.ndarray]] = {}
    captions: dict[int, list[str]] = {}
    originals = np.array([row["op"] == "none" for row in index])
    for cluster in sorted(set(clusters.tolist())):
        # originals first; a cluster made only of augmented copies shows those (captioned with the op)
        chosen = []
        for pool in (np.flatnonzero((clusters == cluster) & originals), np.flatnonzero((clusters == cluster) & ~originals)):
            take = min(per_cluster - len(chosen), len(pool))
            chosen += sorted(rng.choice(pool, size=take, replace=False).tolist()) if take > 0 else []
        images[cluster] = [np.asarray(Image.open(image_dir / index[i]["file"])) for i in chosen]
        captions[cluster] = [index[i]["class"] + ("" if index[i]["op"] == "none" else f" ({index[i]['op']})")
                             for i in chosen]
    return images, captions


def command(
    features_dir: Path = typer.Option(Path("data/features"), "--features", help="featurize output folder."),
    model_path: Path = typer.Option(Path("models/model.joblib"), "--model", help="Fitted pipeline."),
    images: Path = typer.Option(Path("data/augmented"), help="Images the features came from (thumbnails)."),
    params_file: Path = typer.Option(Path("params.yaml"), "--params", help="Parameters to log to MLflow."),
    metrics_path: Path = typer.Option(Path("metrics.json"), "--metrics", help="DVC metrics file."),
    plots_dir: Path = typer.Option(Path("plots"), "--plots", help="Folder of PNG plots."),
    predictions_path: Path = typer.Option(Path("reports/predictions.csv"), "--predictions", help="Per-image clusters."),
    run_info: Path = typer.Option(Path("reports/mlflow_run.json"), help="Where to record the MLflow run id."),
    reports: list[Path] = typer.Option([], "--report", help="Stage reports to summarise in MLflow (repeatable)."),
    thumbnails: int = typer.Option(8, help="Thumbnails per cluster."),
    mlflow_log: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Record the run in MLflow."),
) -> None:
    import json

    import joblib

    from imgclust import plots, tracking
    from imgclust.features import ImageLoader
    from imgclust.image_model import build_image_pipeline

    if not model_path.is_file():
        raise InputDataError(f"{model_path}: not found; run the train stage (dvc repro train).")
    from imgclust.params import load_params

    # all of params.yaml is logged, so it is validated; without logging it is not needed
    params = load_params(params_file) if mlflow_log else {}
    pipeline = joblib.load(model_path)
    features, index, meta = load_features(features_dir)
    result = evaluate_model(pipeline, features, index)
    metrics = result["metrics"]
    # NaN (e.g. silhouette of a single cluster) is not JSON; DVC reads null as missing
    write_json(metrics_path, {split: {k: (None if v != v else v) for k, v in values.items()}
                              for split, values in metrics.items()})
    clusters = result["clusters"]
    write_csv(predictions_path, ({"file": r["file"], "class": r["class"], "split": r["split"], "op": r["op"],
                                  "cluster": int(c)} for r, c in zip(index, clusters)), PREDICTION_FIELDS)

    test_rows = result["splits"] == "test"
    shown = test_rows if test_rows.any() else np.ones(len(index), bool)
    plots.plot_contingency(clusters[shown], result["labels"][shown], plots_dir / "contingency.png",
                           title=f"Clusters x classes ({'test' if test_rows.any() else 'all'} images)")
    plots.plot_scatter(scatter_coordinates(result["embedding"], "pca" in pipeline.named_steps), clusters,
                       result["labels"], plots_dir / "scatter.png", title="Images in the clustering space")
    thumbs, captions = thumbnails_by_cluster(index, clusters, images, thumbnails)
    sizes = {int(c): int(n) for c, n in zip(*np.unique(clusters, return_counts=True))}
    plots.plot_thumbnails(thumbs, plots_dir / "thumbnails.png", captions, title="Sample images per cluster",
                          cluster_sizes=sizes)

    for split, values in metrics.items():
        typer.echo(f"evaluate {split}: ARI {values['ari']:.4f}  NMI {values['nmi']:.4f}  "
                   f"accuracy {values['cluster_accuracy']:.4f}  (n={values['n_samples']})")
    if not mlflow_log:
        return

    summary = {"features": meta, "reports": {}}
    for report in reports:
        if report.is_file():
            summary["reports"][report.stem] = json.loads(report.read_text())
    flat_metrics = {f"{split}_{name}": value for split, values in metrics.items()
                    for name, value in values.items() if value == value}  # drop NaN
    # decode new images exactly as the training images were: their size and mode come from the
    # features themselves, the resampling filter from the resize parameters
    height, width = meta["image_shape"][:2]
    loader = ImageLoader(width, height, meta["color_mode"], params.get("resize", {}).get("resample", "lanczos"))
    extractor = pipeline_extractor(meta)
    test_index = [i for i, r in enumerate(index) if r["split"] == "test"] or list(range(len(index)))
    weights = meta["extractor"].get("weights")
    info = tracking.log_run(
        experiment_name=params.get("mlflow", {}).get("experiment_name", "imgclust"),
        params=params, metrics=flat_metrics,
        tags={**tracking.git_tags(Path.cwd()), **tracking.dvc_tags(), **tracking.dvc_lock_hashes(Path("dvc.lock")),
              "featurize.method": meta["method"], tracking.KIND_TAG: "pipeline"},
        artifacts=[plots_dir, metrics_path, predictions_path],
        dicts={"summary.json": summary, CLUSTER_CLASSES_ARTIFACT: cluster_classes(result)},
        model=pipeline, model_input_example=np.asarray(features[test_index[:2]]),
        image_pipeline=build_image_pipeline(loader, extractor, pipeline),
        weights_file=weights if weights and Path(str(weights)).is_file() else None,
    )
    write_json(run_info, info)
    typer.echo(f"mlflow: run {info['run_id']} in experiment {info['experiment_id']} at {info['tracking_uri']}")


def pipeline_extractor(meta: dict):
    """A fresh, unfitted extractor with the parameters featurize used."""
    from imgclust.features import PixelFeatures

    if meta["method"] == "pixels":
        return PixelFeatures()
    from imgclust.cnn import KerasFeatureExtractor

    return KerasFeatureExtractor(**meta["extractor"])
