"""params.yaml, typed: the one route by which stages and tools read parameter values.

``load()`` reads and validates the whole file and returns a ``PipelineParams``; a stage takes
its own sections from it (and dvc.yaml lists exactly those keys as the stage's ``params``). The
schema is a set of pydantic models (declarative, and pydantic collects every problem in one pass
instead of stopping at the first); this module adds did-you-mean hints and one readable message.
Allowed values come from the core modules that use them, so they cannot drift. The defaults live in
params.yaml alone: every key is required here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from imgclust.core.backbones import BACKBONES, POOLINGS
from imgclust.core.clustering import AUTO_K, CLUSTERERS, COVARIANCE_TYPES, SVD_SOLVERS
from imgclust.core.feature_store import METHODS
from imgclust.core.images import COLOR_MODES, MAX_IMAGE_SIDE, OPS, RESAMPLE_FILTERS
from imgclust.core.phantoms import MIN_IMAGES
from imgclust.core.protocols import PROTOCOLS
from imgclust.core.ray_engine import ENGINES
from imgclust.core.stage_log import LOCAL_DIR
from imgclust.errors import ParamError, did_you_mean

PARAMS_FILE = Path("params.yaml")
SHA256_PATTERN = r"^([0-9a-fA-F]{64})?$"
# what the stages from ingest on write (dvc.yaml's outs, by folder): data.source may be none of these,
# inside none and hold none (DVC: "defined as both a dependency and an output", or a cycle).
# synthesize's output, data/synthetic, is the default source.
PIPELINE_OUTPUTS = (
    "data/raw",
    "data/manifests",
    "data/stripped",
    "data/resized",
    "data/augmented",
    "data/features",
    "models",
    "evaluation",
    "reports",
)


def _one_of(*choices: str):
    """A string restricted to ``choices``; the error suggests the closest one."""

    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(map(repr, choices))}.{did_you_mean(value, choices)}")
        return value

    return Annotated[str, AfterValidator(check)]


def _unique(values: list) -> list:
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{repeated} appear more than once; each op may appear once.")
    return values


def _max_or_positive(value: Any) -> str | int:
    if value != "max" and not (type(value) is int and value >= 1):  # type(): True is not a count
        raise ValueError(f"must be 'max' or an integer >= 1, got {value!r}.{did_you_mean(value, ['max'])}")
    return value


def _tutorial_specs(specs: list[str]) -> list[str]:
    """Each entry reads ``class=op+op`` with known ops."""
    for spec in specs:
        cls, sep, ops = spec.partition("=")
        if not sep or not cls.strip() or not ops.strip():
            raise ValueError(f"entry {spec!r} must look like 'class=op+op', e.g. 'normal=rot180+flip_lr'.")
        for op in (op.strip() for op in ops.split("+")):
            if op not in OPS:
                raise ValueError(f"entry {spec!r}: unknown op {op!r}.{did_you_mean(op, OPS)}")
    return specs


Op = _one_of(*OPS)
PositiveInt = Annotated[int, Field(ge=1)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # numpy/scikit-learn seeds


class _Section(BaseModel):
    # strict: YAML already types values, so a quoted "190" or a `yes` for a number is a mistake
    model_config = ConfigDict(extra="forbid", strict=True)


class DataParams(_Section):
    source: Annotated[str, Field(min_length=1)]
    sha256: Annotated[str, Field(pattern=SHA256_PATTERN)] = ""

    @model_validator(mode="after")
    def _url_needs_checksum(self):
        if urlsplit(self.source).scheme in ("http", "https") and not self.sha256:
            raise ValueError(
                f"source is a URL ({self.source}); set data.sha256 to the archive's sha256 so the download is verified."
            )
        return self


class SynthesizeParams(_Section):
    n_images: Annotated[int, Field(ge=MIN_IMAGES)]
    seed: Seed


class IngestParams(_Section):
    skip_corrupt: bool
    max_archive_bytes: PositiveInt  # what an archive source may unpack to
    max_compression_ratio: Annotated[float, Field(ge=1, le=1e6)]  # unpacked size / archive size


class StripMasksParams(_Section):
    patterns: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]


ImageSide = Annotated[int, Field(ge=1, le=MAX_IMAGE_SIDE)]


class ResizeParams(_Section):
    width: ImageSide
    height: ImageSide
    mode: _one_of(*COLOR_MODES)
    resample: _one_of(*RESAMPLE_FILTERS)


class SplitParams(_Section):
    test_size: Annotated[float, Field(ge=0, lt=1)]
    seed: Seed


class AugmentParams(_Section):
    ops: Annotated[list[Op], AfterValidator(_unique)]
    target: Annotated[Any, AfterValidator(_max_or_positive)]
    seed: Seed
    tutorial_ops: Annotated[list[str], AfterValidator(_tutorial_specs)]


class CnnParams(_Section):
    backbone: _one_of(*BACKBONES)
    alpha: Annotated[float, Field(gt=0)]
    weights: Annotated[str, Field(min_length=1)]  # imagenet | none | a weights file
    input_size: Annotated[int, Field(ge=0)]  # 0: the backbone's default
    pooling: _one_of(*(p for p in POOLINGS if p))
    batch_size: PositiveInt
    power: Annotated[float, Field(gt=0, le=1)]  # signed power normalisation (1: none, 0.5: square root)
    l2: bool  # rows scaled to unit length
    flip: bool  # mean of the image's and its mirror image's features
    layers: list[Annotated[str, Field(min_length=1)]]  # further layers whose pooled maps are appended


class RayParams(_Section):
    """featurize.ray.*: the actor pool of featurize.engine: ray (docs/ray.md)."""

    num_actors: PositiveInt
    num_cpus: Annotated[float, Field(gt=0)]  # per actor
    num_gpus: Annotated[float, Field(ge=0)]  # per actor
    batch_size: PositiveInt
    max_retries: Annotated[int, Field(ge=0, le=100)]


class FeaturizeParams(_Section):
    method: _one_of(*METHODS)
    batch_size: PositiveInt
    cnn: CnnParams
    engine: _one_of(*ENGINES)
    ray: RayParams


class PcaParams(_Section):
    n_components: Annotated[int, Field(ge=0)]  # 0: no PCA
    whiten: bool
    svd_solver: _one_of(*SVD_SOLVERS)


def _k_or_auto(value: Any) -> int | str:
    if type(value) is int and value < 2:  # type(): True is not a count
        raise ValueError(f"Input should be greater than or equal to 2 (got {value!r}).")
    if value != AUTO_K and type(value) is not int:
        raise ValueError(f"must be an integer >= 2 or {AUTO_K!r}, got {value!r}.{did_you_mean(value, [AUTO_K])}")
    return value


class KmeansParams(_Section):
    n_clusters: Annotated[Any, AfterValidator(_k_or_auto)]  # the k of every clusterer but hdbscan
    n_init: PositiveInt
    random_state: Seed


class ScalableParams(_Section):
    threshold: Annotated[int, Field(ge=0)]  # rows from which the batched solvers are used (0: never)
    batch_size: PositiveInt


class AutoKParams(_Section):
    k_min: Annotated[int, Field(ge=2)]
    k_max: Annotated[int, Field(ge=2)]

    @model_validator(mode="after")
    def _ordered(self):
        if self.k_min > self.k_max:
            raise ValueError(f"k_min ({self.k_min}) must not exceed k_max ({self.k_max}).")
        return self


class SpectralParams(_Section):
    n_neighbors: Annotated[int, Field(ge=2)]


class GmmParams(_Section):
    covariance_type: _one_of(*COVARIANCE_TYPES)
    n_init: PositiveInt


class HdbscanParams(_Section):
    min_cluster_size: Annotated[int, Field(ge=2)]
    min_samples: Annotated[int, Field(ge=0)]  # 0: as min_cluster_size


class TrainParams(_Section):
    pca: PcaParams
    kmeans: KmeansParams
    scalable: ScalableParams
    clusterer: _one_of(*CLUSTERERS)
    auto_k: AutoKParams
    spectral: SpectralParams
    gmm: GmmParams
    hdbscan: HdbscanParams

    def fit_settings(self) -> dict:
        """fit_model's and scan_k's ``pca``, ``kmeans`` and ``scalable`` arguments, as scikit-learn takes them."""
        return {
            "pca": self.pca.model_dump(),
            "kmeans": self.kmeans.model_dump(),
            "scalable": self.scalable.model_dump(),
        }

    def clusterer_settings(self) -> dict:
        """fit_model's clusterer arguments: ``clusterer``, ``clusterers`` and ``auto_k``."""
        return {
            "clusterer": self.clusterer,
            "clusterers": {name: getattr(self, name).model_dump() for name in ("spectral", "gmm", "hdbscan")},
            "auto_k": self.auto_k.model_dump(),
        }


class EvaluateParams(_Section):
    thumbnails: Annotated[int, Field(ge=0)]


class MlflowParams(_Section):
    experiment_name: Annotated[str, Field(min_length=1)]


class PipelineParams(_Section):
    """The whole of params.yaml."""

    protocol: _one_of(*PROTOCOLS)
    data: DataParams
    synthesize: SynthesizeParams
    ingest: IngestParams
    strip_masks: StripMasksParams
    resize: ResizeParams
    split: SplitParams
    augment: AugmentParams
    featurize: FeaturizeParams
    train: TrainParams
    evaluate: EvaluateParams
    mlflow: MlflowParams


def _section_model(loc: tuple) -> type[BaseModel] | None:
    """The model that holds the key at ``loc`` (for suggesting its known keys)."""
    model: Any = PipelineParams
    for key in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(key)
        if field is None:
            return None
        model = field.annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _describe(error: dict) -> str:
    where = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if not where:
        return f"the file must be a mapping of parameter sections such as 'resize:', got {error['input']!r}."
    if kind == "extra_forbidden":
        known = list(getattr(_section_model(error["loc"]), "model_fields", {}))
        hint = did_you_mean(error["loc"][-1], known) or f" Known keys here: {', '.join(known)}."
        return f"{where}: unknown key.{hint}"
    if kind == "missing":
        return f"{where}: missing (required)."
    if kind == "value_error":  # our own validators: their message already says what and why
        return f"{where}: {error['ctx']['error']}"
    return f"{where}: {error['msg']} (got {error['input']!r})."


def validate(params: Any, origin: str = str(PARAMS_FILE)) -> PipelineParams:
    """``params`` (the parsed params.yaml) as a PipelineParams; ParamError listing every problem."""
    try:
        return PipelineParams.model_validate(params)
    except ValidationError as exc:
        problems = [_describe(error) for error in exc.errors(include_url=False)]
        raise ParamError(
            f"{origin}: {len(problems)} invalid parameter(s):\n" + "\n".join(f"  - {p}" for p in problems)
        ) from None


def read(path: Path = PARAMS_FILE) -> Any:
    """The parsed YAML of ``path``, not validated."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamError(f"{path}: not found; run imgclust from the project folder (where dvc.yaml is).") from None
    except yaml.YAMLError as exc:
        raise ParamError(f"{path}: not valid YAML ({exc}).") from None


class UndeclaredParamError(LookupError):
    """Code read a key of params.yaml that its stage does not declare: DVC would not rerun the
    stage when that key changes. Add the key to the stage's PARAMS and its dvc.yaml ``params``.
    Not an AttributeError, so ``getattr(view, key, default)`` cannot hide it."""


class ParamsView:
    """The keys of a PipelineParams that a stage declared (dotted, e.g. ``resize.resample``), read
    as attributes like the model itself; reading any other key raises UndeclaredParamError."""

    def __init__(self, model: BaseModel, keys: tuple[str, ...], prefix: str = ""):
        self._model, self._keys, self._prefix = model, keys, prefix

    def __getattr__(self, name: str):
        if name.startswith("_"):  # copy/pickle probes; never a parameter
            raise AttributeError(name)
        dotted = f"{self._prefix}{name}"
        if dotted in self._keys:
            return getattr(self._model, name)
        if any(key.startswith(f"{dotted}.") for key in self._keys):
            return ParamsView(getattr(self._model, name), self._keys, f"{dotted}.")
        raise UndeclaredParamError(f"{dotted} is not among the declared parameters {', '.join(self._keys)}.")


def _is_url(source: str) -> bool:
    return urlsplit(source).scheme.lower() in ("http", "https")


def check_source(
    data: DataParams, project: Path = Path("."), origin: str = str(PARAMS_FILE), must_exist: bool = True
) -> None:
    """Refuse a local ``data.source`` that overlaps what the pipeline writes (``/``, ``.``, the
    project folder, data/raw, ...: DVC would call it both a dependency and an output) and, with
    ``must_exist``, one that does not exist; the message names data.source."""
    source = data.source
    if _is_url(source):
        return
    project = Path(project).resolve()
    resolved = (project / Path(source).expanduser()).resolve()
    for out in PIPELINE_OUTPUTS:
        written = (project / out).resolve()
        if resolved == written or written in resolved.parents:
            where = f"inside {out}/" if resolved != written else out
        elif resolved in written.parents:
            where = (
                "the project folder"
                if resolved == project
                else "a folder holding the project"
                if resolved in project.parents
                else f"a folder holding {out}/"
            )
        else:
            continue
        raise ParamError(
            f"{origin}: data.source {source!r} is {where}, which the pipeline writes ({out}): DVC would refuse it "
            "as both a dependency and an output. Set data.source to a folder of class subfolders (or an "
            "archive) outside the pipeline's outputs, e.g. ../Dataset_BUSI_with_GT or data/synthetic."
        )
    if must_exist and not resolved.exists():
        raise ParamError(
            f"{origin}: data.source {source!r} does not exist ({resolved}). Set data.source to a folder of "
            "class subfolders or a .zip/.tar.gz/.tgz archive (a relative path is read from the project folder)."
        )


def load(keys: tuple[str, ...] | None = None, path: Path = PARAMS_FILE) -> PipelineParams:
    """Read and validate ``path`` (the project's params.yaml, whole); with ``keys`` (a stage's
    PARAMS), return a view that reads those keys only.

    ``data.source`` is checked against the pipeline's outputs (always wrong, for every caller);
    that it exists is ingest's to check (``check_source``), when it reads it."""
    params = validate(read(path), origin=str(path))
    check_source(params.data, Path(path).parent, origin=str(path), must_exist=False)
    return params if keys is None else ParamsView(params, tuple(keys))


def experiment_name(path: Path = PARAMS_FILE) -> str | None:
    """``mlflow.experiment_name`` of the project's params.yaml, None outside a project (tools then
    use the default experiment)."""
    return load(("mlflow.experiment_name",), path).mlflow.experiment_name if Path(path).is_file() else None


# Per-checkout settings that are no parameters (they do not change results, only where things are
# found): a git-ignored YAML file at the project root, so a fresh clone needs no shell exports.
LOCAL_SETTINGS = LOCAL_DIR / "local.yaml"
LOCAL_SETTINGS_ENV = {"keras_home": "KERAS_HOME"}  # setting -> environment variable it provides


def _project_root() -> Path:
    """``DVC_ROOT`` under DVC (also for experiments run in a temporary copy), else the nearest folder
    holding dvc.yaml, else the current one."""
    import os

    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path.cwd().resolve()
    return next((folder for folder in (here, *here.parents) if (folder / "dvc.yaml").exists()), here)


def local_dir() -> Path:
    """The project's git-ignored folder of per-checkout files (settings, timings, logs)."""
    return _project_root() / LOCAL_SETTINGS.parent


CACHE_ENV = "IMGCLUST_CACHE_DIR"  # where stages keep per-image results; "off": keep none


def cache_root() -> Path | None:
    """Where the stages keep what they computed, to reuse it (``.imgclust/cache`` unless
    IMGCLUST_CACHE_DIR says otherwise); None when IMGCLUST_CACHE_DIR is "off"."""
    import os

    setting = os.environ.get(CACHE_ENV, "")
    return None if setting == "off" else Path(setting) if setting else local_dir() / "cache"


def fit_cache():
    """The train stage's and scan-k's cache of fitted PCAs (``core.fit_cache``), or None."""
    from imgclust.core.fit_cache import FitCache

    root = cache_root()
    return None if root is None else FitCache(root / "train")


def item_cache(stage: str, stage_file: str, settings: dict):
    """The per-image cache of ``stage`` (``core.item_cache``) for these ``settings``: its entries
    are keyed by them and by the code the stage runs (the files dvc.yaml lists as its deps)."""
    from imgclust.core.item_cache import ItemCache, code_version

    root = cache_root()
    package = Path(__file__).parent
    files = [Path(stage_file), package / "config.py", package / "errors.py", *(package / "core").glob("*.py")]
    return ItemCache(root, stage, {"code": code_version(files), "settings": settings})


def apply_local_settings(root: Path | None = None) -> dict[str, str]:
    """Set the environment variables named in ``.imgclust/local.yaml`` (``keras_home: PATH``,
    relative to the project root) that the environment does not set already; return those set.
    Called before every command, before TensorFlow or Keras is imported."""
    import os

    root = _project_root() if root is None else Path(root)
    path = root / LOCAL_SETTINGS
    if not path.is_file():
        return {}
    settings = read(path) or {}
    if not isinstance(settings, dict):
        raise ParamError(f"{path}: must be a mapping such as 'keras_home: ../keras', got {settings!r}.")
    unknown = sorted(set(settings) - set(LOCAL_SETTINGS_ENV))
    if unknown:
        raise ParamError(
            f"{path}: unknown setting(s) {', '.join(unknown)}.{did_you_mean(unknown[0], list(LOCAL_SETTINGS_ENV))} "
            f"Known: {', '.join(LOCAL_SETTINGS_ENV)}."
        )
    applied = {}
    for key, variable in LOCAL_SETTINGS_ENV.items():
        if settings.get(key) and not os.environ.get(variable):
            value = str((root / Path(str(settings[key])).expanduser()).resolve())
            os.environ[variable] = applied[variable] = value
    return applied
