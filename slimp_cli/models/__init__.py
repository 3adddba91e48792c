"""SLIMP models: timm image encoder, TRACE tabular encoders, the nested/flat/image model."""

from ..model_config import ModelConfig
from .image import (
    LOCAL_MODELS,
    create_image_encoder,
    load_image_weights,
    patch_embedding_parameters,
)
from .inputs import MetadataInputs, patient_record
from .slimp import (
    SlimpModel,
    build_model,
    replace_tabular_inputs,
    scatter_to_patients,
    tabular_feature_lists,
)
from .tabular import TraceEncoder, TraceInputs

__all__ = [
    "LOCAL_MODELS",
    "MetadataInputs",
    "ModelConfig",
    "SlimpModel",
    "TraceEncoder",
    "TraceInputs",
    "build_model",
    "create_image_encoder",
    "load_image_weights",
    "patient_record",
    "patch_embedding_parameters",
    "replace_tabular_inputs",
    "scatter_to_patients",
    "tabular_feature_lists",
]
