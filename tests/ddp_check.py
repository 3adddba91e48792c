"""Loss of one fixed global batch with K processes (torchrun) or one: a check of the DDP loss.

    torchrun --nproc-per-node 2 tests/ddp_check.py DATA OUT.json --patients 8
    python tests/ddp_check.py DATA OUT.json --patients 8

Each of K ranks takes its slice of the first `--patients` patients; the outer loss gathers every
rank's patients as negatives; the rank-averaged loss and DDP-averaged gradient must equal the
single-process loss and gradient on the whole batch (tests/test_distributed.py).
"""

from __future__ import annotations

import json

import torch
import torch.distributed as dist

from slimp_cli.core.errors import SlimpError
from slimp_cli.data.shards import ShardIndex
from slimp_cli.losses import compute_loss
from slimp_cli.models import build_model
from slimp_cli.models.config import ModelConfig
from slimp_cli.train.data import PatientDataset, PatientItem, collate
from slimp_cli.train.distributed import init_from_env, loss_kwargs, shutdown


def fixed_batch_loss(
    data_dir: str,
    *,
    patients: int,
    lesions: int,
    seed: int = 0,
    image_model: str = "vit_test",
    img_size: int = 32,
    tab_dim: int = 32,
    temperature: float = 0.1,
    lam: float = 0.9,
) -> dict:
    """Loss and gradient norm of a fixed global batch (the first `patients` patients).

    Under torchrun each rank takes its slice of the global batch and the outer loss gathers
    every rank's patients; the mean of the rank losses then equals the single-process loss.
    """

    device = torch.device("cpu")
    info = init_from_env(device)
    index = ShardIndex.open(data_dir)
    schema = index.schema
    if patients % info.world_size:
        raise SlimpError(f"{patients} patients do not split over {info.world_size} processes")
    per_rank = patients // info.world_size
    torch.manual_seed(seed)
    cfg = ModelConfig(
        variant="nested",
        image_model=image_model,
        img_size=img_size,
        tab_dim=tab_dim,
        embed_dim=tab_dim,
    )
    model = build_model(cfg, schema)
    model.train()
    ds = PatientDataset(index, inputs=model.inputs, preprocess=model.preprocess)
    items = []
    for q in range(info.rank * per_rank, (info.rank + 1) * per_rank):
        n = len(index.patient(q).lesions)
        items.append(PatientItem(q, tuple(range(min(n, lesions))), (seed, 0, 0, q)))
    batch = collate([ds[it] for it in items])
    outputs = model(batch)
    out = compute_loss(
        "nested", outputs, temperature=temperature, lam=lam, **loss_kwargs(info, outputs)
    )
    out["loss"].backward()
    # Gradients as DDP would average them.
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if info.enabled:
        for g in grads:
            dist.all_reduce(g)
            g /= info.world_size
    values = {k: float(v.detach()) for k, v in out.items()}
    if info.enabled:
        t = torch.tensor([values[k] for k in sorted(values)], dtype=torch.float64)
        dist.all_reduce(t)
        values = {k: float(v) / info.world_size for k, v in zip(sorted(values), t)}
    flat = torch.cat([g.reshape(-1) for g in grads])
    shutdown()
    return {
        "world_size": info.world_size,
        "rank": info.rank,
        "grad_norm": float(flat.double().norm()),
        "grad": flat,
        **values,
    }


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=fixed_batch_loss.__doc__)
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--patients", type=int, default=8)
    ap.add_argument("--lesions", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    result = fixed_batch_loss(
        args.data, patients=args.patients, lesions=args.lesions, seed=args.seed
    )
    if result["rank"] == 0:
        torch.save(result.pop("grad"), args.out + ".grad.pt")
        with open(args.out, "w") as fh:
            json.dump(result, fh)


if __name__ == "__main__":
    main()
