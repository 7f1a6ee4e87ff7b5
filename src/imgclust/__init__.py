"""imgclust: reproducible, versioned, unsupervised image clustering with DVC and MLflow."""

__version__ = "0.1.0"
