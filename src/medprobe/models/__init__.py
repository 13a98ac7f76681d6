"""Backbone registry and backends. This package's __init__ stays torch-free; the torch side lives in
medprobe.models.backbone (load_backbone, resolve_preprocessing, weights_identity)."""

from medprobe.models.preprocess import Preprocessing
from medprobe.models.registry import REGISTRY, ModelSpec, resolve_model

__all__ = ["REGISTRY", "ModelSpec", "Preprocessing", "resolve_model"]
