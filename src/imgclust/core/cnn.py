"""Pretrained Keras CNN embeddings as a scikit-learn transformer.

Keras and TensorFlow are imported inside functions only: importing this module is cheap, and the
pixels method never pays for TensorFlow.
"""

from __future__ import annotations

import os
import re
import warnings
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from imgclust.core.backbones import (
    ALPHA_BACKBONES,
    BACKBONES,
    DEFAULT_MIN_INPUT_SIZE,
    MIN_INPUT_SIZE,
    POOLINGS,
    backbone_label,
    check_backbone,
)
from imgclust.errors import InputDataError, ParamError, WeightsUnavailableError

_URL_RE = re.compile(r"(https?://\S+?)(?::\s|\s|$)")


def _weights_kind(weights) -> tuple[str, Path | None]:
    """('imagenet' | 'none' | 'path', path)."""
    if weights is None:
        return "none", None
    if isinstance(weights, os.PathLike):
        return "path", Path(weights).expanduser()
    if isinstance(weights, str):
        if weights.strip().lower() == "imagenet":
            return "imagenet", None
        if weights.strip().lower() in ("none", "null", ""):
            return "none", None
        return "path", Path(weights).expanduser()
    raise ParamError(f"featurize.cnn.weights must be 'imagenet', 'none' or a file path, got {weights!r}")


def _input_size(backbone: str, input_size) -> tuple[int, int]:
    default = BACKBONES[backbone][2]
    if input_size is None:
        return default
    if isinstance(input_size, Integral) and not isinstance(input_size, bool):
        size = (int(input_size), int(input_size))
    elif (
        isinstance(input_size, (tuple, list))
        and len(input_size) == 2
        and all(isinstance(v, Integral) and not isinstance(v, bool) for v in input_size)
    ):
        size = (int(input_size[0]), int(input_size[1]))
    else:
        raise ParamError(f"featurize.cnn.input_size must be an int or (height, width), got {input_size!r}")
    low = MIN_INPUT_SIZE.get(backbone, DEFAULT_MIN_INPUT_SIZE)
    if min(size) < low:
        raise ParamError(
            f"featurize.cnn.input_size {size} too small for {backbone}: each side must be >= {low} "
            f"(default {default[0]}x{default[1]})."
        )
    return size


def _check_params(backbone, weights, alpha, input_size, pooling="avg", batch_size=1):
    check_backbone(backbone)
    kind, path = _weights_kind(weights)
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not float(alpha) > 0:
        raise ParamError(f"featurize.cnn.alpha must be a number > 0, got {alpha!r}")
    size = _input_size(backbone, input_size)
    if pooling not in POOLINGS:
        raise ParamError(f"featurize.cnn.pooling must be 'avg', 'max' or None, got {pooling!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
        raise ParamError(f"featurize.cnn.batch_size must be an int >= 1, got {batch_size!r}")
    return kind, path, size


def keras_cache_dir() -> Path:
    """The folder where Keras looks for (and downloads) application weights, as ``get_file`` computes it:
    ``$KERAS_HOME/models`` (``~/.keras/models`` by default), or ``/tmp/.keras/models`` when the Keras
    home is not writable. Keras reads KERAS_HOME once, when it is first imported."""
    try:
        from keras.src.backend import config

        home = config.keras_home()
    except (ImportError, AttributeError):  # pragma: no cover - other Keras layouts
        home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    base = os.path.expanduser(home)
    if not os.access(base, os.W_OK):
        base = os.path.join("/tmp", ".keras")
    return Path(base) / "models"


def _keras_home_models() -> Path:
    try:
        from keras.src.backend import config

        return Path(os.path.expanduser(config.keras_home())) / "models"
    except (ImportError, AttributeError):  # pragma: no cover
        return Path(os.environ.get("KERAS_HOME") or os.path.expanduser("~/.keras")) / "models"


def _is_download_failure(exc: BaseException) -> bool:
    import urllib.error

    text = str(exc)
    return (
        isinstance(exc, (urllib.error.URLError, ConnectionError, TimeoutError))
        or "URL fetch failure" in text
        or "Incomplete or corrupted file" in text
    )


def _weights_file_from(exc: BaseException) -> tuple[str | None, str | None]:
    """(file name, URL) of the weights Keras tried to download, parsed from its error message."""
    match = _URL_RE.search(str(exc))
    if not match:
        return None, None
    url = match.group(1)
    return url.rstrip("/").rsplit("/", 1)[-1] or None, url


def _unavailable_message(backbone: str, alpha: float, fname: str | None, url: str | None, exc: BaseException) -> str:
    cache = keras_cache_dir()
    what = fname or f"the {backbone} ImageNet weights file"
    home_note = ""
    if cache.parent != _keras_home_models().parent:
        home_note = f" (the Keras home {_keras_home_models().parent} is not writable, so Keras uses {cache.parent})"
    return (
        f"ImageNet weights for {backbone_label(backbone, alpha)} are not available: Keras looked for {what} in "
        f"{cache}{home_note} and could not download it"
        f"{f' from {url}' if url else ''} ({type(exc).__name__}: {str(exc).strip()[:300]}). "
        f"Fix: put {what} into {cache}; or name a Keras home whose models/ folder holds it, once per "
        f"checkout, in the git-ignored .imgclust/local.yaml of the project (keras_home: PATH; read by every "
        f"imgclust command, also under dvc exp run) or in the KERAS_HOME environment variable (before imgclust "
        f"starts); or set featurize.cnn.weights to the path of a "
        f"weights file for this backbone (or 'none' for random weights)."
    )


def build_backbone(
    backbone: str = "mobilenet", weights="imagenet", alpha: float = 1.0, input_size=None, pooling: str | None = "avg"
):
    """The headless Keras model; ParamError / WeightsUnavailableError with a fix in the message."""
    kind, path, size = _check_params(backbone, weights, alpha, input_size, pooling)
    if kind == "path" and not path.is_file():
        raise WeightsUnavailableError(
            f"weights file {path} for {backbone_label(backbone, alpha)} not found; set featurize.cnn.weights "
            f"to an existing weights file, 'imagenet' or 'none'."
        )
    import keras

    ctor_name = BACKBONES[backbone][0]
    ctor = getattr(keras.applications, ctor_name)
    kwargs = {"include_top": False, "input_shape": (size[0], size[1], 3), "pooling": pooling}
    if backbone in ALPHA_BACKBONES:
        kwargs["alpha"] = float(alpha)

    def construct(weights_arg):
        try:
            return ctor(weights=weights_arg, **kwargs)
        except ValueError as exc:
            if weights_arg == "imagenet" and _is_download_failure(exc):
                raise
            raise ParamError(
                f"cannot build {backbone_label(backbone, alpha)} with input size {size[0]}x{size[1]}"
                f" and weights {weights!r}: {exc}"
            ) from exc

    def load_file(model, file: Path):
        def unusable(reason: str) -> WeightsUnavailableError:
            return WeightsUnavailableError(
                f"weights file {file} cannot be loaded into {backbone_label(backbone, alpha)} "
                f"(headless, input {size[0]}x{size[1]}): {reason}. "
                f"It must hold weights saved from the same backbone without its top."
            )

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                model.load_weights(str(file))
            except Exception as exc:  # Keras raises ValueError, OSError, KeyError... for a mismatched file
                raise unusable(f"{type(exc).__name__}: {str(exc).strip()[:300]}") from exc
        for warning in caught:
            text = str(warning.message)
            # never keep random weights silently where a file was named
            if "freshly-initialized" in text or "could not be loaded" in text:
                raise unusable(f"some layers would keep random weights ({text.strip()[:300]})")
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        return model

    if kind == "none":
        return construct(None)
    if kind == "path":
        return load_file(construct(None), path)
    try:
        return construct("imagenet")
    except ParamError:
        raise
    except OSError as exc:
        if _is_download_failure(exc):
            failure = exc
        else:  # a cached file that h5py cannot read
            raise WeightsUnavailableError(
                f"cached ImageNet weights for {backbone_label(backbone, alpha)} in {keras_cache_dir()} cannot be "
                f"read ({exc}); delete the damaged file so Keras downloads it again, or set "
                f"featurize.cnn.weights to a weights file path."
            ) from exc
    except Exception as exc:  # Keras's get_file raises a bare Exception on a failed download
        if not _is_download_failure(exc):
            raise
        failure = exc
    fname, url = _weights_file_from(failure)
    # Keras downloads into /tmp/.keras when $KERAS_HOME is read-only, even when the file is there
    if fname:
        home_file = _keras_home_models() / fname
        if home_file.is_file() and home_file.parent != keras_cache_dir():
            return load_file(construct(None), home_file)
    raise WeightsUnavailableError(_unavailable_message(backbone, alpha, fname, url, failure)) from failure


def check_weights_available(backbone: str, weights="imagenet", alpha: float = 1.0, input_size=None) -> None:
    """Raise ParamError / WeightsUnavailableError now if the extractor could not be built.

    Builds (and drops) the model: seconds for the large backbones, well under one for mobilenet.
    """
    kind, _, _ = _check_params(backbone, weights, alpha, input_size)
    if kind != "none":
        build_backbone(backbone, weights, alpha, input_size)


def _image_list(X) -> list | np.ndarray:
    """Validate X: uint8 (N, H, W) / (N, H, W, 3) array, or a sequence of (H, W) / (H, W, 3) / (H, W, 1)."""
    if isinstance(X, np.ndarray):
        if X.ndim not in (3, 4) or (X.ndim == 4 and X.shape[3] not in (1, 3)):
            raise InputDataError(f"images must be a uint8 array (N, H, W) or (N, H, W, 3), got shape {X.shape}")
        if X.dtype != np.uint8:
            raise InputDataError(f"images must be uint8 (0-255), got dtype {X.dtype}")
        if X.shape[0] and (X.shape[1] == 0 or X.shape[2] == 0):
            raise InputDataError(f"images have an empty side: shape {X.shape}")
        return X
    try:
        images = list(X)
    except TypeError:
        raise InputDataError(f"images must be an array or a list of arrays, got {type(X).__name__}") from None
    for i, image in enumerate(images):
        if not isinstance(image, np.ndarray):
            raise InputDataError(f"image {i} is a {type(image).__name__}, not a numpy array")
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
            raise InputDataError(f"image {i} must be (H, W) gray or (H, W, 3) RGB, got shape {image.shape}")
        if image.dtype != np.uint8:
            raise InputDataError(f"image {i} must be uint8 (0-255), got dtype {image.dtype}")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise InputDataError(f"image {i} has an empty side: shape {image.shape}")
    return images


def _rgb_float(images: np.ndarray, gray: bool) -> np.ndarray:
    """float32 copy with 3 channels last; ``gray``: ``images`` has no channel axis yet."""
    if gray:
        images = images[..., None]
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return images.astype(np.float32)


class KerasFeatureExtractor(TransformerMixin, BaseEstimator):
    """Global-pooled activations of a headless ``keras.applications`` backbone, as float32 rows.

    ``fit`` builds the model (and fails early, with the fix in the message, when ImageNet weights are
    missing); ``transform`` takes uint8 gray or RGB images of any size, resizes them bilinearly to the
    backbone's input size, applies the backbone's own ``preprocess_input`` and runs the model in
    batches. Pickling drops the Keras model; ``transform`` rebuilds it from the parameters (random
    initial weights travel with the pickle, so a reloaded extractor transforms identically).
    """

    def __init__(
        self,
        backbone="mobilenet",
        weights="imagenet",
        alpha=1.0,
        input_size=None,
        pooling="avg",
        batch_size=32,
        progress=False,
    ):
        self.backbone = backbone
        self.weights = weights
        self.alpha = alpha
        self.input_size = input_size
        self.pooling = pooling
        self.batch_size = batch_size
        self.progress = progress

    def fit(self, X=None, y=None):
        _check_params(self.backbone, self.weights, self.alpha, self.input_size, self.pooling, self.batch_size)
        model = build_backbone(self.backbone, self.weights, self.alpha, self.input_size, self.pooling)
        self._set_model(model)
        return self

    def _set_model(self, model) -> None:
        self.model_ = model
        self.input_size_ = tuple(int(v) for v in model.input_shape[1:3])
        self.n_features_out_ = int(np.prod(model.output_shape[1:]))

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "input_size_")

    def __getstate__(self):
        state = dict(super().__getstate__())
        model = state.pop("model_", None)
        if model is not None and _weights_kind(self.weights)[0] == "none":
            state["_init_weights"] = [np.asarray(w) for w in model.get_weights()]
        return state

    def _ensure_model(self):
        if getattr(self, "model_", None) is None:
            model = build_backbone(self.backbone, self.weights, self.alpha, self.input_size, self.pooling)
            init = self.__dict__.get("_init_weights")
            if init is not None:
                model.set_weights(init)
            self._set_model(model)
        return self.model_

    def transform(self, X):
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self)
        images = _image_list(X)
        n = len(images)
        out = np.empty((n, self.n_features_out_), dtype=np.float32)
        if n == 0:
            return out
        model = self._ensure_model()
        import importlib

        import keras
        from tqdm import tqdm

        preprocess = importlib.import_module(f"keras.applications.{BACKBONES[self.backbone][1]}").preprocess_input
        size = self.input_size_
        step = int(self.batch_size)
        with tqdm(
            total=n,
            unit="img",
            desc=f"cnn {backbone_label(self.backbone, self.alpha)}",
            disable=not self.progress,
            leave=False,
        ) as bar:
            for start in range(0, n, step):
                stop = min(start + step, n)
                batch = self._prepare(images[start:stop], size, keras)
                # predict_on_batch runs a compiled graph: about 3x the eager model(batch) on CPU
                features = model.predict_on_batch(preprocess(batch))
                out[start:stop] = np.asarray(keras.ops.convert_to_numpy(features)).reshape(stop - start, -1)
                bar.update(stop - start)
        return out

    @staticmethod
    def _prepare(images, size: tuple[int, int], keras) -> np.ndarray:
        """float32 (n, h, w, 3) 0-255 RGB, each image resized bilinearly (antialiased when shrinking)."""

        def resize(array: np.ndarray) -> np.ndarray:  # (n, H, W, 3) of one size
            if array.shape[1:3] == size:
                return array
            resized = keras.ops.image.resize(
                array, size, interpolation="bilinear", antialias=True, data_format="channels_last"
            )
            return np.asarray(keras.ops.convert_to_numpy(resized), dtype=np.float32)

        if isinstance(images, np.ndarray):
            return resize(_rgb_float(images, gray=images.ndim == 3))
        batch = np.empty((len(images), size[0], size[1], 3), dtype=np.float32)
        for i, image in enumerate(images):
            batch[i] = resize(_rgb_float(image, gray=image.ndim == 2)[None])[0]
        return batch

    def get_feature_names_out(self, input_features=None):
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self)
        return np.asarray([f"{self.backbone}{i}" for i in range(self.n_features_out_)], dtype=object)
