"""Ingest: dataset files -> patient-grouped WebDataset shards + schema.json + manifest.json.

- `pipeline.py`: `ingest()`, the one engine every dataset goes through (typing, roles, images,
  shards, manifest), driven by the dataset schema.
- `rows.py`, `values.py`: a table of strings -> typed patient/lesion entries.
- `images.py`: finding image files and normalising them for the shards.
- `infer.py`: `slimp schema infer`, a draft schema from a CSV.
- `synth.py`: the generated cohort of `slimp synth` (tests and the demo).
- `formats/`: one adapter per release layout (SLICE-3D, PAD-UFES-20, ...), plus generic CSV.
"""

from .formats import FORMATS, get_adapter
from .pipeline import ingest

__all__ = ["FORMATS", "get_adapter", "ingest"]
