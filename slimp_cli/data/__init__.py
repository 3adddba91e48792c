"""The data contracts: what ingest writes and training, embedding and evaluation read.

- `schema.py`: the dataset schema (roles, types, vocabularies, statistics) as JSON and resolved.
- `shards.py`: patient-grouped WebDataset shards with random access (`ShardIndex`, cases).
- `shard_stream.py`: the same shards read front to back through a URL template
  (`--shard-url`), and `index.json`, the patient index read before any shard.
- `holdout.py`: the patients a run holds out of every training stage (`holdout.json`).
- `image_io.py`: how images are opened (decompression-bomb limit) and resized (PIL only, so
  ingest never imports torch).
- `transforms.py`: image preprocessing and augmentation for the models (torch).
- `decode.py`: `--decode gpu`, the same preprocessing with JPEG decoding on the device.

Nothing here knows about models, losses or training.
"""
