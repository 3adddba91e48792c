"""Parameter counts of SLIMP models on a dataset's schema, beside the paper's Tables 9 and 12.

    python benchmarks/param_counts.py --data SHARDS [--tab-layers 1 2]

Prints one JSON line per (image model, TRACE layers): total parameters, the ViT's, everything
else (tabular encoders, projections, phenotype layer) and what `adapt --tune embeddings` trains
(the ViT patch embedding + the TRACE input embeddings, App. D). Builds models only (no data
beyond schema.json is read, nothing is downloaded).
"""

from __future__ import annotations

import argparse
import json

from slimp_cli.data.shards import ShardIndex
from slimp_cli.models import build_model
from slimp_cli.models.config import ModelConfig
from slimp_cli.train.loop import parameter_counts

VITS = ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="an ingested shard folder (its schema.json)")
    ap.add_argument("--tab-layers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    schema = ShardIndex.open(args.data).schema
    for vit in VITS:
        for layers in args.tab_layers:
            model = build_model(ModelConfig(image_model=vit, tab_layers=layers), schema)
            counts = parameter_counts(model)
            vit_params = counts["parts"]["image_encoder"]["total"]
            model.set_trainable("embeddings")
            adapt_trainable = parameter_counts(model)["trainable"]
            print(
                json.dumps(
                    {
                        "dataset": schema.name,
                        "image_model": vit,
                        "tab_layers": layers,
                        "total_M": round(counts["total"] / 1e6, 2),
                        "vit_M": round(vit_params / 1e6, 2),
                        "non_vit_M": round((counts["total"] - vit_params) / 1e6, 2),
                        "adapt_embeddings_trainable_M": round(adapt_trainable / 1e6, 2),
                    }
                )
            )


if __name__ == "__main__":
    main()
