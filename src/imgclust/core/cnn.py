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
from imgclust.errors import InputDataError, ParamError, WeightsUnavailableError, did_you_mean

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


GEM_P = 3.0  # generalised-mean exponent: the usual choice for retrieval (Radenovic et al. 2018)


def pool_maps(maps: np.ndarray, pooling: str | None) -> np.ndarray:
    """(n, h, w, c) activations -> (n, c) rows: ``avg``, ``max`` or ``gem`` (generalised mean with
    exponent GEM_P: between average and max pooling), in float32; None: the maps flattened."""
    maps = np.asarray(maps, dtype=np.float32)
    if pooling is None:
        return maps.reshape(len(maps), -1)
    if pooling == "avg":
        return maps.mean(axis=(1, 2))
    if pooling == "max":
        return maps.max(axis=(1, 2))
    if pooling == "gem":
        clipped = np.clip(maps.astype(np.float64), 1e-6, None)  # post-ReLU maps; clip keeps the root real
        return (np.mean(clipped**GEM_P, axis=(1, 2)) ** (1.0 / GEM_P)).astype(np.float32)
    raise ParamError(f"featurize.cnn.pooling must be one of {', '.join(map(str, POOLINGS))}, got {pooling!r}")


def normalise(features: np.ndarray, power: float = 1.0, l2: bool = False) -> np.ndarray:
    """Power normalisation (``sign(x) |x|^power``; 0.5 is the square root, which damps bursty
    channels) then, with ``l2``, each row scaled to unit length (cosine geometry for k-means)."""
    out = np.asarray(features, dtype=np.float32)
    if power != 1.0:
        out = np.sign(out) * np.abs(out) ** np.float32(power)
    if l2:
        norms = np.linalg.norm(out.astype(np.float64), axis=1, keepdims=True)
        out = (out / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


def combine(blocks: list[np.ndarray], power: float = 1.0, l2: bool = False) -> np.ndarray:
    """Pooled blocks (one per layer) normalised each (``normalise``) and side by side; with ``l2``
    every block has the same weight and the whole row unit length."""
    if len(blocks) == 1:
        return normalise(blocks[0], power, l2)
    joined = np.concatenate([normalise(block, power, l2) for block in blocks], axis=1)
    return (joined / np.sqrt(len(blocks))).astype(np.float32) if l2 else joined


def _check_post(power, l2, flip) -> None:
    if isinstance(power, bool) or not isinstance(power, Real) or not 0 < float(power) <= 1:
        raise ParamError(f"featurize.cnn.power must be a number in (0, 1] (1: none, 0.5: square root), got {power!r}")
    for name, value in (("l2", l2), ("flip", flip)):
        if not isinstance(value, bool):
            raise ParamError(f"featurize.cnn.{name} must be true or false, got {value!r}")


def _keras_pooling(pooling):
    """The pooling Keras applies itself; gem needs the unpooled maps."""
    return None if pooling == "gem" else pooling


def _check_params(backbone, weights, alpha, input_size, pooling="avg", batch_size=1):
    check_backbone(backbone)
    kind, path = _weights_kind(weights)
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not float(alpha) > 0:
        raise ParamError(f"featurize.cnn.alpha must be a number > 0, got {alpha!r}")
    size = _input_size(backbone, input_size)
    if pooling not in POOLINGS:
        raise ParamError(f"featurize.cnn.pooling must be 'avg', 'max', 'gem' or None, got {pooling!r}")
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
    pooling = _keras_pooling(pooling)
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

    Post-processing, part of the extractor so that the image-level model and ``predict`` apply it
    too: ``pooling`` avg | max | gem; ``flip``: the mean of the image's and its mirror image's
    pooled features (test-time augmentation); then ``power`` (signed power, 0.5 = square root) and
    ``l2`` (unit rows). The defaults (avg, 1.0, False, False) are the plain pooled activations.

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
        power=1.0,
        l2=False,
        flip=False,
        layers=(),
    ):
        self.backbone = backbone
        self.weights = weights
        self.alpha = alpha
        self.input_size = input_size
        self.pooling = pooling
        self.batch_size = batch_size
        self.progress = progress
        self.power = power
        self.l2 = l2
        self.flip = flip
        self.layers = layers

    def fit(self, X=None, y=None):
        _check_params(self.backbone, self.weights, self.alpha, self.input_size, self.pooling, self.batch_size)
        _check_post(self.power, self.l2, self.flip)
        if self.layers and self.pooling is None:
            raise ParamError("featurize.cnn.layers needs a pooling (avg, max or gem) to pool each layer's maps.")
        self._set_model(self._build())
        return self

    def _build(self):
        """The backbone; with ``layers``, a model whose outputs are those layers' maps and then the
        backbone's own output."""
        model = build_backbone(self.backbone, self.weights, self.alpha, self.input_size, self.pooling)
        if not self.layers:
            return model
        import keras

        named = [layer.name for layer in model.layers[1:] if len(layer.output.shape) == 4]
        outputs = []
        for name in self.layers:
            if name not in named:
                raise ParamError(
                    f"featurize.cnn.layers: {backbone_label(self.backbone, self.alpha)} has no layer {name!r} with "
                    f"feature maps.{did_you_mean(name, named)} Its last ones: {', '.join(named[-6:])}."
                )
            outputs.append(model.get_layer(name).output)
        return keras.Model(inputs=model.input, outputs=[*outputs, model.output])

    def _set_model(self, model) -> None:
        self.model_ = model
        self.input_size_ = tuple(int(v) for v in model.input_shape[1:3])
        shapes = model.output_shape if self.layers else [model.output_shape]
        # a 4-d output is pooled here (gem, or any extra layer): one value per channel
        self.n_features_out_ = int(sum(s[-1] if len(s) == 4 and self.pooling else np.prod(s[1:]) for s in shapes))

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "input_size_")

    def __setstate__(self, state):
        # models pickled before the post-processing parameters existed transform as they did
        super().__setstate__({"power": 1.0, "l2": False, "flip": False, "layers": (), **state})

    def __getstate__(self):
        state = dict(super().__getstate__())
        model = state.pop("model_", None)
        if model is not None and _weights_kind(self.weights)[0] == "none":
            state["_init_weights"] = [np.asarray(w) for w in model.get_weights()]
        return state

    def _ensure_model(self):
        if getattr(self, "model_", None) is None:
            model = self._build()
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
                blocks = self._pooled(model, preprocess(batch), keras)
                if self.flip:  # preprocess_input may work in place: mirror a fresh copy
                    mirrored = self._prepare(images[start:stop], size, keras)[:, :, ::-1]
                    flipped = self._pooled(model, preprocess(np.ascontiguousarray(mirrored)), keras)
                    blocks = [(a + b) / 2 for a, b in zip(blocks, flipped)]
                out[start:stop] = combine(blocks, self.power, self.l2)
                bar.update(stop - start)
        return out

    def _pooled(self, model, batch: np.ndarray, keras) -> list[np.ndarray]:
        """One pooled block per model output (the extra layers', then the backbone's)."""
        # predict_on_batch runs a compiled graph: about 3x the eager model(batch) on CPU
        outputs = model.predict_on_batch(batch)
        blocks = []
        for output in outputs if self.layers else [outputs]:
            array = np.asarray(keras.ops.convert_to_numpy(output))
            pooled = array.ndim == 4 and (self.pooling == "gem" or self.layers)
            blocks.append(pool_maps(array, self.pooling) if pooled else array.reshape(len(batch), -1))
        return blocks

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
