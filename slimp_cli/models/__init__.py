"""The networks, their configuration, and the run dir that stores a trained one.

- `config.py`: `ModelConfig` (the architecture, saved in config.json) and the `DictConfig` base.
- `image.py`: timm image encoders (`create_image_encoder`, local weights only), `tabular.py`:
  TRACE's metadata encoders, `inputs.py`: which metadata fields feed which encoder.
- `slimp.py`: `SlimpModel` (nested / flat / image-only SimCLR) and `build_model`; `sm3.py`:
  `Sm3Model` (two branches, SimCLR and cross-modal heads, label projections); `kmeans.py`:
  spherical k-means for SM3's pseudo-labels.
- `runs.py`: the run-dir contract every later stage loads through: `load_run(path) -> Run`
  (model, weights, schema, preprocessing), checkpoints (`torch.load(weights_only=True)`).
"""

from .config import ModelConfig
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
