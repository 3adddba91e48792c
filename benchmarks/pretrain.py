"""Pre-training and embedding throughput end to end against the bare model, side by side.

    python benchmarks/pretrain.py [--patients 200] [--model vit_test] [--img-size 32]
                                  [-B 16] [-N 4] [--steps 20] [--device cpu] [--workers 0]

One JSON line per figure: {"figure", "value", "ceiling", "ratio", "unit", ...}.
- pretrain_images_per_s: `slimp_cli.train.pretrain` on ingested shards of a generated cohort
  (nested SLIMP, B patients x up to N lesions), images/s over the steps after the first
  (`metrics.jsonl`), vs the ceiling: the same image encoder's forward + backward + AdamW step on
  random uint8 tensors of the same batch size (no data path, no metadata encoders, no loss);
- embed_images_per_s: `slimp_cli.embed.embed` of the same shards vs the bare inference of the
  same encoder on random tensors of the same batch size.
On a GPU pass `--model vit_small_patch16_224 --img-size 224 --device cuda -B 4 -N 100` (the
issue's targets: >= 90% of the compiled training ceiling, >= 80% of the inference ceiling);
those figures have not been measured yet (no GPU in the sessions so far).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from slimp_cli.devices import resolve_device  # noqa: E402
from slimp_cli.embed import embed  # noqa: E402
from slimp_cli.ingest import ingest  # noqa: E402
from slimp_cli.ingest.synth import generate_cohort  # noqa: E402
from slimp_cli.model_config import ModelConfig  # noqa: E402
from slimp_cli.models import build_model  # noqa: E402
from slimp_cli.runs import read_metrics  # noqa: E402
from slimp_cli.train import pretrain  # noqa: E402


def bare_rate(model, n_images: int, img_size: int, dev, *, train: bool, steps: int) -> float:
    """Images/s of the image encoder alone on random uint8 batches of `n_images`."""
    enc = model.image_encoder.to(dev)
    x = torch.randint(0, 256, (n_images, 3, img_size, img_size), dtype=torch.uint8, device=dev)
    opt = torch.optim.AdamW(enc.parameters(), lr=1e-4) if train else None

    def step():
        inp = model.preprocess.normalize(x)
        if train:
            enc(inp).float().pow(2).mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                enc(inp)

    step()  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return steps * n_images / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--model", default="vit_test")
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("-B", type=int, default=16)
    ap.add_argument("-N", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    dev = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_cohort(tmp / "cohort", patients=args.patients, seed=0, image_size=64)
        ingest("synth", tmp / "cohort", tmp / "shards", image_size=args.img_size, workers=2)
        model_cfg = ModelConfig(image_model=args.model, img_size=args.img_size)
        train = dict(
            patients_per_batch=args.B,
            lesions_per_patient=args.N,
            epochs=100,
            max_steps=args.steps,
            device=args.device,
            workers=args.workers,
            log_every=1,
        )
        run = pretrain(tmp / "shards", tmp / "run", model=model_cfg, train=train)
        rows = read_metrics(run)[1:]  # the first step pays for start-up
        e2e = sum(r["images_per_s"] for r in rows) / len(rows)
        mean_images = _mean_batch_images(tmp / "shards", args.B, args.N)
        model = build_model(model_cfg, _schema(tmp / "shards"))
        ceiling = bare_rate(model, mean_images, args.img_size, dev, train=True, steps=args.steps)
        t0 = time.perf_counter()
        embed(
            run,
            tmp / "shards",
            tmp / "s.h5",
            batch_size=256,
            device=args.device,
            workers=args.workers,
        )
        n = _n_images(tmp / "shards")
        embed_rate = n / (time.perf_counter() - t0)
        infer = bare_rate(
            model, 256, args.img_size, dev, train=False, steps=max(3, args.steps // 4)
        )
    common = {
        "model": args.model,
        "img_size": args.img_size,
        "B": args.B,
        "N": args.N,
        "device": str(dev),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    print(
        json.dumps(
            {
                "figure": "pretrain_images_per_s",
                "value": round(e2e, 1),
                "ceiling": round(ceiling, 1),
                "ratio": round(e2e / ceiling, 3),
                "unit": "images/s",
                "ceiling_batch_images": mean_images,
                **common,
            }
        )
    )
    print(
        json.dumps(
            {
                "figure": "embed_images_per_s",
                "value": round(embed_rate, 1),
                "ceiling": round(infer, 1),
                "ratio": round(embed_rate / infer, 3),
                "unit": "images/s",
                "images": n,
                **common,
            }
        )
    )


def _schema(shards: Path):
    from slimp_cli.shards import ShardIndex

    return ShardIndex.open(shards).schema


def _mean_batch_images(shards: Path, b: int, n: int) -> int:
    """Images in an average training batch of epoch 0 (what the ceiling step must process)."""
    from slimp_cli.shards import ShardIndex
    from slimp_cli.train.data import PatientBatchSampler, patient_infos

    sampler = PatientBatchSampler(
        patient_infos(ShardIndex.open(shards)), patients_per_batch=b, lesions_per_patient=n
    )
    plan = sampler.plan(0)
    return max(1, round(sum(len(it.lesions) for step in plan for it in step) / len(plan)))


def _n_images(shards: Path) -> int:
    from slimp_cli.shards import ShardIndex

    index = ShardIndex.open(shards)
    return sum(len(index.patient(i).lesions) for i in range(len(index)))


if __name__ == "__main__":
    main()
