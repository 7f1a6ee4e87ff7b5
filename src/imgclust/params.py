"""The schema of params.yaml: types, ranges and allowed values, checked before any stage runs.

The schema is a set of pydantic models (declarative, and pydantic collects every problem in one
pass instead of stopping at the first); this module only adds did-you-mean hints and one
readable message. Allowed values come from the modules that use them, so they cannot drift.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from imgclust.augment import OPS, PROTOCOLS
from imgclust.errors import ParamError, did_you_mean
from imgclust.featurize import METHODS
from imgclust.images import COLOR_MODES, RESAMPLE_FILTERS
from imgclust.synthesize import MIN_IMAGES
from imgclust.train import SVD_SOLVERS

# imgclust.cnn.BACKBONES' keys; not imported from there because imgclust.cnn imports scikit-learn,
# which every CLI call would then pay for (tests/test_params.py checks the two agree).
BACKBONE_NAMES = ("mobilenet", "mobilenet_v2", "resnet50", "efficientnet_b0", "vgg16", "inception_v3",
                  "densenet121")
POOLINGS = ("avg", "max")
SHA256_PATTERN = r"^([0-9a-fA-F]{64})?$"


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
            raise ValueError(f"source is a URL ({self.source}); set data.sha256 to the archive's sha256 "
                             "so the download is verified.")
        return self


class SynthesizeParams(_Section):
    n_images: Annotated[int, Field(ge=MIN_IMAGES)]
    seed: Seed


class IngestParams(_Section):
    skip_corrupt: bool


class StripMasksParams(_Section):
    patterns: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]


class ResizeParams(_Section):
    width: PositiveInt
    height: PositiveInt
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
    backbone: _one_of(*BACKBONE_NAMES)
    alpha: Annotated[float, Field(gt=0)]
    weights: Annotated[str, Field(min_length=1)]  # imagenet | none | a weights file
    input_size: Annotated[int, Field(ge=0)]       # 0: the backbone's default
    pooling: _one_of(*POOLINGS)
    batch_size: PositiveInt


class FeaturizeParams(_Section):
    method: _one_of(*METHODS)
    batch_size: PositiveInt
    cnn: CnnParams


class PcaParams(_Section):
    n_components: Annotated[int, Field(ge=0)]  # 0: no PCA
    whiten: bool
    svd_solver: _one_of(*SVD_SOLVERS)


class KmeansParams(_Section):
    n_clusters: Annotated[int, Field(ge=2)]
    n_init: PositiveInt
    random_state: Seed


class ScalableParams(_Section):
    threshold: Annotated[int, Field(ge=0)]  # rows from which the batched solvers are used (0: never)
    batch_size: PositiveInt


class TrainParams(_Section):
    pca: PcaParams
    kmeans: KmeansParams
    scalable: ScalableParams


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


def validate_params(params: Any, origin: str = "params.yaml") -> None:
    """Raise ParamError listing every problem of ``params`` (the parsed params.yaml)."""
    try:
        PipelineParams.model_validate(params)
    except ValidationError as exc:
        problems = [_describe(error) for error in exc.errors(include_url=False)]
        raise ParamError(f"{origin}: {len(problems)} invalid parameter(s):\n"
                         + "\n".join(f"  - {p}" for p in problems)) from None


def load_params(path: Path) -> dict:
    """Read and validate a params.yaml; return it as a dict."""
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamError(f"{path}: not found.") from None
    except yaml.YAMLError as exc:
        raise ParamError(f"{path}: not valid YAML ({exc}).") from None
    validate_params(params, origin=str(path))
    return params
