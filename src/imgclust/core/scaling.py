"""The first step of a pixel model: uint8 pixels to floats in [0, 1].

Its own module so that importing the clustering code (and the parameter checks that read its
allowed values) does not import scikit-learn.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin


class PixelScaler(BaseEstimator, TransformerMixin):
    """uint8 pixels -> float32 in [0, 1] (``scale`` = 1/255); stateless."""

    def __init__(self, scale: float = 1 / 255):
        self.scale = scale

    def fit(self, X=None, y=None):
        return self

    def __sklearn_is_fitted__(self) -> bool:  # stateless: always ready
        return True

    def transform(self, X) -> np.ndarray:
        return self.transform_into(X, None)

    def transform_into(self, X, out: np.ndarray | None) -> np.ndarray:
        """``transform`` written into ``out`` (float32, X's shape; None: a new array), so that a
        buffer can serve batch after batch: a fresh one costs more in page faults than the scaling."""
        return np.multiply(np.asarray(X), np.float32(self.scale), out=out, dtype=np.float32)
