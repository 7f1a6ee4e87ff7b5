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

MODEL_ARTIFACTS = ("image_model", "model")  # image paths in / features in
MODEL_URI_TAG = "imgclust.{}_uri"  # MLflow 3 keeps models as logged models (models:/m-...)
CLUSTER_CLASSES_ARTIFACT = "cluster_classes.json"
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
