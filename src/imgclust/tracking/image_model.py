"""The image-level MLflow model: image files or arrays in, cluster ids out.

It wraps one scikit-learn ``Pipeline``: ImageLoader -> feature extractor -> [scale] -> [PCA] -> KMeans.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import mlflow.pyfunc
import numpy as np


def _as_items(model_input) -> list:
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        column = "path" if "path" in model_input.columns else model_input.columns[0]
        return [str(p) for p in model_input[column]]
    if isinstance(model_input, pd.Series):
        return [str(p) for p in model_input]
    if isinstance(model_input, (str, Path)):
        return [str(model_input)]
    if isinstance(model_input, np.ndarray) and model_input.dtype.kind in "UO":
        return [str(p) for p in model_input.ravel()]
    return list(model_input)


# MLflow warns at class creation that predict() has no type hints; hints would make MLflow coerce
# the input itself, and this model takes paths or arrays on purpose. MLflow resets the warning
# filters around that check, so only silencing the display for the class statement works.
with warnings.catch_warnings():
    warnings.showwarning = lambda *args, **kwargs: None

    class ImageClusterModel(mlflow.pyfunc.PythonModel):
        """pyfunc wrapper. Input: a DataFrame with a ``path`` column (or a list of paths, or a list of
        uint8 image arrays through ``unwrap_python_model().predict_images``). Output: cluster ids."""

        def load_context(self, context):
            import joblib

            self.pipeline = joblib.load(context.artifacts["pipeline"])
            weights = context.artifacts.get("weights")
            if weights:
                # a weights file travels with the model; point the extractor at this copy
                self.pipeline.named_steps["features"].weights = weights

        def predict_images(self, items) -> np.ndarray:
            return np.asarray(self.pipeline.predict(items), dtype=np.int64)

        def predict(self, context, model_input, params=None):
            return self.predict_images(_as_items(model_input))
