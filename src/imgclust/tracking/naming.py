"""Every name imgclust uses in MLflow: tags, parameter and metric keys, artifact names and filters.

Written by ``tracking.runs`` and read back by compare, register, predict and reproduce through the
helpers here, so both sides always agree.
"""

from __future__ import annotations

DEFAULT_EXPERIMENT = "imgclust"
LOCAL_STORE_DIR = "mlruns"

KIND_TAG = "imgclust.kind"  # what a run is: one of the two kinds below
PIPELINE_KIND, K_SCAN_KIND = "pipeline", "k_scan"
PIPELINE_RUNS = f"tags.`{KIND_TAG}` = '{PIPELINE_KIND}'"  # search filter
FINISHED_RUNS = "attributes.status = 'FINISHED'"
METHOD_TAG = "featurize.method"
GIT_COMMIT_TAG, GIT_DIRTY_TAG = "git_commit", "git_dirty"
# the process that logs a run, so a run left RUNNING by a dead process can be marked FAILED
PID_TAG, PID_START_TAG, HOST_TAG = "imgclust.pid", "imgclust.pid_start", "imgclust.host"
PID_NAMESPACE_TAG = "imgclust.pid_namespace"  # containers sharing a host name have pid namespaces of their own
FAILED_REASON_TAG = "imgclust.failed_reason"
METRIC_WARNINGS_TAG = "imgclust.metric_warnings"  # a metric undefined or trivial (one class, one cluster)
# DVC's environment variable -> tag
DVC_ENV_TAGS = {"DVC_EXP_NAME": "dvc_exp_name", "DVC_EXP_BASELINE_REV": "dvc_baseline_rev"}
DATA_TAG_PREFIX = "data."  # data.<stage>.<out path> -> the output's content hash in dvc.lock
DATA_STAGES_WITH_HASHES = ("ingest", "strip_masks", "resize", "split", "augment", "featurize")

# the experiment: MLflow 3's UI opens a "custom model development" experiment on its training runs
# (not on the GenAI traces overview), with its description and the metric its charts rank by
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.note.content": (
        "imgclust: unsupervised image clustering. One run per `dvc repro` / `dvc exp run` that reaches "
        "evaluate (imgclust.kind=pipeline) and one per `imgclust scan-k` (k_scan). Runs are named "
        "dataset | features | k | protocol; the Dataset column shows the data (name, digest = data version "
        "of dvc.lock, train/test). test_ari: adjusted Rand index of the test images' clusters against "
        "their classes (1 = the classes exactly, 0 = chance). Time and memory of each stage: metrics time/* "
        "and memory/*. Compare runs of one dataset only (imgclust compare --dataset)."
    ),
    "mlflow.experiment.primaryMetric.name": "test_ari",
    "mlflow.experiment.primaryMetric.greaterIsBetter": "true",
}

# the data a run used: the dataset's name (from data.source), its version (the content hash of
# ingest's data/raw in dvc.lock) and data.source itself, as tags (filters) and as dataset inputs
DATASET_TAG, DATA_VERSION_TAG, DATA_SOURCE_TAG = "imgclust.dataset", "imgclust.data_version", "imgclust.data_source"
DATA_VERSION_OUTPUT = ("ingest", "data/raw")  # (stage, output) of dvc.lock whose hash is the data version
DATASET_CONTEXTS = ("train", "test")  # mlflow.data.context of the two dataset inputs
DATASET_DIGEST_LIMIT = 36  # characters MLflow's SQL store keeps of a dataset digest
TRAINING_IMAGES_ARTIFACT = "training_images.json"  # sizes, modes, pixel statistics: predict's checks

# per-stage wall time (s) and peak resident memory (MiB) of the pipeline run; totals over stages
STAGE_TIME_METRIC, STAGE_MEMORY_METRIC = "time/{}_s", "memory/{}_peak_mb"
TOTAL_TIME_METRIC, TOTAL_MEMORY_METRIC = "time/total_s", "memory/peak_mb"

MODEL_ARTIFACTS = ("image_model", "model")  # image paths in / features in
MODEL_URI_TAG = "imgclust.{}_uri"  # MLflow 3 keeps models as logged models (models:/m-...)
CLUSTER_CLASSES_ARTIFACT = "cluster_classes.json"
CLUSTER_SHARES_ARTIFACT = "cluster_class_shares.json"  # cluster -> {class: share of its train images}
SUMMARY_ARTIFACT = "summary.json"

PARAM_VALUE_LIMIT = 6000  # MLflow's longest parameter value
TAG_VALUE_LIMIT = 5000  # characters MLflow keeps of a tag value
# table column -> MLflow metric, for the spellings users type (ari_test) besides the logged ones (test_ari)
METRIC_ALIASES = {
    "ari_train": "train_ari",
    "ari_test": "test_ari",
    "nmi_train": "train_nmi",
    "nmi_test": "test_nmi",
    "acc_train": "train_cluster_accuracy",
    "acc_test": "test_cluster_accuracy",
}


def model_uri_tag(artifact: str) -> str:
    return MODEL_URI_TAG.format(artifact)


def metric_key(split: str, name: str) -> str:
    """The logged name of metric ``name`` of ``split`` (train/test): ``test_ari``."""
    return f"{split}_{name}"


def metric_name(name: str) -> str:
    """Accept both ``ari_test`` (table column) and ``test_ari`` (MLflow metric) spellings."""
    return METRIC_ALIASES.get(name, name)


def split_metrics(metrics: dict[str, dict]) -> dict[str, float]:
    """metrics.json ({split: {name: value}}) under the logged names; NaN and None dropped."""
    return {
        metric_key(split, name): float(value)
        for split, values in metrics.items()
        for name, value in values.items()
        if value is not None and value == value
    }


def flatten(params: dict, prefix: str = "") -> dict[str, object]:
    """Nested parameters as dotted keys: {"train": {"pca": {"whiten": False}}} -> {"train.pca.whiten": False}."""
    flat: dict[str, object] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def set_dotted(params: dict, key: str, value: object) -> None:
    """Set dotted ``a.b.c`` in nested dicts, creating the missing levels (the inverse of ``flatten``)."""
    *parents, leaf = key.split(".")
    node = params
    for name in parents:
        if not isinstance(node.get(name), dict):
            node[name] = {}
        node = node[name]
    node[leaf] = value


def param_value(value: object) -> str:
    """How a parameter value is logged: ``str(value)`` (None as ``null``), cut to MLflow's limit."""
    return "null" if value is None else str(value)[:PARAM_VALUE_LIMIT]


def parse_param_value(value: str, current: object = None) -> object:
    """A logged parameter value back to its YAML value (the inverse of ``param_value``).

    Lists and dicts were logged as Python reprs, which ``ast.literal_eval`` reads exactly (a YAML
    parse would mangle backslashes in quoted strings); scalars go through ``yaml.safe_load`` (4 ->
    int, 0.1 -> float, False/false -> bool, null -> None). A key whose value in the commit's
    params.yaml is a string stays a string, so e.g. a path named ``1.0`` is not turned into a float;
    ``null`` is None whatever the key held before.
    """
    import ast

    import yaml

    if value == "null":
        return None
    if isinstance(current, str):
        return value
    if value[:1] in "[{(":
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def param_column(key: str) -> str:
    """The search_runs column of parameter ``key``."""
    return f"params.{key}"


def metric_column(name: str) -> str:
    """The search_runs column of logged metric ``name``."""
    return f"metrics.{name}"


def dataset_name(source: str) -> str:
    """A dataset's name from ``data.source``: its last path part, without an archive suffix
    (``../shared/datasets/busi-sample`` -> ``busi-sample``, ``https://x/photos.tar.gz`` -> ``photos``)."""
    from urllib.parse import urlsplit

    path = urlsplit(source).path if "://" in source else source
    name = path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or source
    for suffix in (".tar.gz", ".tgz", ".zip"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def dataset_digest(version: str) -> str:
    """The dataset digest MLflow stores: the data version as dvc.lock spells it (``<md5>.dir``)."""
    return version[:DATASET_DIGEST_LIMIT]


def dataset_input_name(dataset: str, context: str) -> str:
    """The name of one dataset input: MLflow merges inputs of equal name and digest, so train and
    test carry their context in the name too."""
    return f"{dataset} ({context})"


def features_label(method: str, backbone: str | None = None, alpha: object = None) -> str:
    """``pixels`` or the CNN backbone (``cnn mobilenet a0.25``)."""
    if method != "cnn" or not backbone:
        return method
    width = f" a{alpha}" if backbone.startswith("mobilenet") and alpha not in (None, 1, 1.0, "1.0") else ""
    return f"cnn {backbone}{width}"


def run_name(dataset: str | None, features: str, k: object, protocol: str | None) -> str:
    """What a pipeline run is, at a glance: ``busi-sample | pixels | k=3 | honest``."""
    parts = [dataset or "unknown data", features, f"k={k}" if k is not None else "", protocol or ""]
    return " | ".join(p for p in parts if p)


RUN_DESCRIPTION_TAG = "mlflow.note.content"  # the run page's Description


def run_description(name: str, dataset: dict | None, profiles: dict[str, dict], metrics: dict[str, float]) -> str:
    """The run page's description: what ran on which data, its headline scores and its time."""
    lines = [f"**{name}**"]
    if dataset:
        lines.append(f"Data: `{dataset['source']}`, data version `{dataset['version']}`.")
    counts = ", ".join(
        f"{p['images']} {context} images ({p['augmented_copies']} augmented copies)" for context, p in profiles.items()
    )
    if counts:
        lines.append(counts + ".")
    scores = [
        f"{label} {metrics[key]:.3f}"
        for label, key in (("test ARI", "test_ari"), ("train ARI", "train_ari"))
        if key in metrics
    ]
    if scores:
        lines.append(", ".join(scores) + " (1 = the classes exactly, 0 = chance).")
    if TOTAL_TIME_METRIC in metrics:
        lines.append(
            f"Stages run: {metrics[TOTAL_TIME_METRIC]:.1f} s, peak memory {metrics[TOTAL_MEMORY_METRIC]:.0f} MiB."
        )
    return "\n\n".join(lines)[:TAG_VALUE_LIMIT]


def is_stage_metric(name: str) -> bool:
    """A stage's wall time or peak memory (``stage_metrics``): a measurement of the machine, which no
    re-run reproduces, unlike the scores."""
    prefixes = {text.split("/", 1)[0] + "/" for text in (STAGE_TIME_METRIC, STAGE_MEMORY_METRIC)}
    return name.startswith(tuple(prefixes))


def stage_metrics(records: dict[str, dict]) -> dict[str, float]:
    """stage -> {wall_s, peak_mb} as metrics, with the total time and the highest peak."""
    metrics: dict[str, float] = {}
    for stage, record in records.items():
        metrics[STAGE_TIME_METRIC.format(stage)] = float(record["wall_s"])
        metrics[STAGE_MEMORY_METRIC.format(stage)] = float(record["peak_mb"])
    if records:
        metrics[TOTAL_TIME_METRIC] = round(sum(float(r["wall_s"]) for r in records.values()), 3)
        metrics[TOTAL_MEMORY_METRIC] = max(float(r["peak_mb"]) for r in records.values())
    return metrics


def tag_filter(tag: str, value: str) -> str:
    """A search filter on one tag's value (quotes in ``value`` escaped)."""
    escaped = value.replace("'", "\\'")
    return f"tags.`{tag}` = '{escaped}'"
