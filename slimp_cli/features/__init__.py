"""A trained run applied to data: feature stores and the files other tools read.

- `store.py`: the HDF5 feature store contract (`FeatureStoreWriter`, `FeatureStore`): what
  `embed` writes and `probe`/`retrieve`/`extrapolate` read.
- `plan.py`: what a store of a run on some data holds (`StorePlan`) and how its rows are
  computed, shared by every way of writing one.
- `embed.py`: `slimp embed`, run + local shards -> store; `embed_streamed.py`: the same store
  from shards streamed through `--shard-url`.
- `timm_encoder.py`: any timm image encoder with local weights -> an image-only store, scored
  with the same probes as SLIMP (the paper's foundation-model comparisons).
- `encode.py`: `slimp encode`, one image (+ metadata) -> its vectors, without shards.
- `export.py`: `slimp export`, a run -> timm-loadable files, heads and a model card.
"""
