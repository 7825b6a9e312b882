"""transferkit: a reproducible transfer-learning pipeline (DVC + MLflow + Keras)."""

__version__ = "0.1.0"
