"""Image-to-feature transformers following the scikit-learn estimator contract.

A whole image-level model is a ``Pipeline`` of ``ImageLoader`` -> a feature extractor
(``PixelFeatures`` or ``imgclust.core.cnn.KerasFeatureExtractor``) -> the fitted clustering model
(``imgclust.core.clustering``: [scaling] -> [PCA] -> KMeans).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from imgclust.core.feature_store import check_method, pixel_rows
from imgclust.core.images import convert, load_array, pil_mode, resample_filter
from imgclust.errors import InputDataError


class ImageLoader(BaseEstimator, TransformerMixin):
    """File paths (or uint8 arrays) -> list of uint8 arrays at ``width`` x ``height`` in ``color_mode``,
    decoded exactly as the resize stage does."""

    def __init__(self, width: int = 190, height: int = 190, color_mode: str = "gray", resample: str = "lanczos"):
        self.width = width
        self.height = height
        self.color_mode = color_mode
        self.resample = resample

    def fit(self, X=None, y=None):
        pil_mode(self.color_mode), resample_filter(self.resample)
        return self

    def __sklearn_is_fitted__(self) -> bool:  # stateless: always ready
        return True

    def _one(self, item) -> np.ndarray:
        from PIL import Image

        if isinstance(item, (str, Path)):
            return load_array(Path(item), self.color_mode, (self.width, self.height), self.resample)
        array = np.asarray(item)
        if array.dtype != np.uint8:
            raise InputDataError(f"image arrays must be uint8 0-255, got {array.dtype}")
        image = convert(Image.fromarray(array), self.color_mode)
        if image.size != (self.width, self.height):
            image = image.resize((self.width, self.height), resample_filter(self.resample))
        return np.asarray(image, dtype=np.uint8)

    def transform(self, X: Sequence) -> list[np.ndarray]:
        return [self._one(item) for item in X]

    def decode(self, name: str, data: bytes) -> np.ndarray:
        """The file ``name``'s bytes ``data`` (read elsewhere, e.g. sent to a Ray worker) decoded as
        ``transform`` decodes that file."""
        return load_array(Path(name), self.color_mode, (self.width, self.height), self.resample, data=data)


class PixelFeatures(BaseEstimator, TransformerMixin):
    """Equal-size uint8 images -> flattened uint8 rows (scaled to [0, 1] later, when used)."""

    def fit(self, X=None, y=None):
        return self

    def __sklearn_is_fitted__(self) -> bool:  # stateless: always ready
        return True

    def transform(self, X) -> np.ndarray:
        return pixel_rows(X)


def make_extractor(method: str, cnn_params: dict):
    """A fresh, unfitted extractor for featurize ``method``; ``cnn_params`` are the
    KerasFeatureExtractor's parameters (used by the cnn method only)."""
    check_method(method)
    if method == "pixels":
        return PixelFeatures()
    from imgclust.core.cnn import KerasFeatureExtractor

    return KerasFeatureExtractor(**cnn_params)


def image_pipeline(loader: ImageLoader, extractor, fitted_model):
    """Prefix a fitted feature-level pipeline with the loader and extractor (fitted here: they
    learn nothing from data, fitting only validates them and builds the CNN)."""
    from sklearn.pipeline import Pipeline

    return Pipeline([("load", loader.fit()), ("features", extractor.fit()), *fitted_model.steps])
