"""Loss and gradient of one fixed global batch with the image SSL term, K processes or one.

    torchrun --nproc-per-node 2 tests/ddp_ssl_check.py DATA OUT.json
    python tests/ddp_ssl_check.py DATA OUT.json

The batch: the first `--patients` patients with at least two images, two images each, so every
rank has as many images as the others (each rank averages its own anchors; equal counts make
the rank mean the global mean) and the images' offsets differ from the patients'. The loss is
the training loop's own (`loop._compute_loss`: nested + W * NT-Xent, every rank's views
gathered as negatives); tests/test_image_ssl.py compares 2 processes with 1.
"""

from __future__ import annotations

import json

import torch
import torch.distributed as dist

from slimp_cli.data.shards import ShardIndex
from slimp_cli.models import build_model
from slimp_cli.models.config import ModelConfig
from slimp_cli.train.batches import batch_to, collate
from slimp_cli.train.data import PatientDataset, PatientItem
from slimp_cli.train.distributed import init_from_env, shutdown
from slimp_cli.train.loop import _compute_loss
from slimp_cli.train.ssl import build_ssl_net
from slimp_cli.train.train_config import TrainConfig


def fixed_batch(data_dir: str, *, patients: int, weight: float) -> dict:
    device = torch.device("cpu")
    info = init_from_env(device)
    index = ShardIndex.open(data_dir)
    chosen = [i for i in range(len(index)) if len(index.patient(i).lesions) >= 2][:patients]
    assert len(chosen) == patients and patients % info.world_size == 0
    per_rank = patients // info.world_size
    torch.manual_seed(0)
    cfg = ModelConfig(variant="nested", image_model="vit_test", img_size=32, tab_dim=32)
    model = build_model(cfg, index.schema)
    net = build_ssl_net(model, seed=0)
    net.train()
    ds = PatientDataset(index, inputs=model.inputs, preprocess=model.preprocess, ssl_views=True)
    items = [
        PatientItem(chosen[q], (0, 1), (0, 0, 0, q))
        for q in range(info.rank * per_rank, (info.rank + 1) * per_rank)
    ]
    batch = batch_to(collate([ds[it] for it in items]), device, model.preprocess)
    train = TrainConfig(image_ssl_weight=weight, temperature=0.1, lam=0.9)
    out = _compute_loss("nested", net(batch), train, info)
    out["loss"].backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    if info.enabled:  # as DDP averages them
        for g in grads:
            dist.all_reduce(g)
            g /= info.world_size
    keys = sorted(out)
    values = torch.tensor([float(out[k].detach()) for k in keys], dtype=torch.float64)
    if info.enabled:
        dist.all_reduce(values)
        values /= info.world_size
    flat = torch.cat([g.reshape(-1) for g in grads])
    shutdown()
    return {
        "rank": info.rank,
        "world_size": info.world_size,
        "grad": flat,
        **dict(zip(keys, values.tolist())),
    }


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--patients", type=int, default=8)
    ap.add_argument("--weight", type=float, default=0.5)
    args = ap.parse_args()
    result = fixed_batch(args.data, patients=args.patients, weight=args.weight)
    if result["rank"] == 0:
        torch.save(result.pop("grad"), args.out + ".grad.pt")
        with open(args.out, "w") as fh:
            json.dump(result, fh)


if __name__ == "__main__":
    main()
