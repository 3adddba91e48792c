"""The ceilings the pipeline benchmarks compare against, timed at the pipeline's own batch.

- `bare_encoder`: the image encoder alone on random uint8 images (forward + backward + the
  optimiser step when training, forward only for inference);
- `whole_model_step`: the whole model's training step (image and metadata encoders, SLIMP's
  loss, gradient clipping and the optimiser, as `train/loop.py` does it) on batches already on
  the device: the batches' shapes and metadata are real (sampled as the run samples them), the
  pixels random. The end-to-end rate over this one isolates what the data path, collation and
  host-to-device copies cost; its `optimizer_share` is the optimiser's part of the step;
- `whole_model_inference`: what `embed` computes per batch (image, lesion and patient
  features) on tensors already on the device.

Rates are the mean of per-step images/s after one warm-up step, as `metrics.jsonl` reports the
end-to-end rate (the same statistic on both sides of a ratio).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[int], int], steps: int, device: torch.device) -> list[float]:
    """Per-step images/s of `step(i)` (returns the images it processed) after one warm-up."""
    step(0)
    _sync(device)
    rates = []
    for i in range(steps):
        t0 = time.perf_counter()
        n = step(i + 1)
        _sync(device)
        rates.append(n / (time.perf_counter() - t0))
    return rates


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def bare_encoder(
    model,
    n_images: int,
    device: torch.device,
    *,
    train: bool,
    steps: int,
    autocast=None,
) -> float:
    """Images/s of the image encoder alone on random uint8 batches of `n_images`."""
    from slimp_cli.train.optim import make_optimizer

    enc = model.image_encoder.to(device)
    size = model.preprocess.img_size
    x = torch.randint(0, 256, (n_images, 3, size, size), dtype=torch.uint8, device=device)
    opt = make_optimizer(enc.parameters(), lr=1e-4, device=device) if train else None
    ctx = autocast if autocast is not None else torch.autocast(device.type, enabled=False)

    def step(_):
        inp = model.preprocess.normalize(x)
        if train:
            enc.train()
            with ctx:
                out = enc(inp)
            out.float().pow(2).mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            enc.eval()
            with torch.no_grad(), ctx:
                enc(inp)
        return n_images

    return mean(time_steps(step, steps, device))


def sample_batches(shards: Path, model, *, b: int, n: int, count: int, seed: int = 0) -> list:
    """`count` collated training batches (B patients x up to N lesions, the sampler's plan of
    epoch 0) with random pixels: real shapes and metadata, no decoding to time."""
    from slimp_cli.data.shards import ShardIndex
    from slimp_cli.train.data import PatientBatchSampler, PatientDataset, collate, patient_infos

    index = ShardIndex.open(shards)
    ds = PatientDataset(
        index, inputs=model.inputs, preprocess=model.preprocess, classes=index.schema.classes
    )
    sampler = PatientBatchSampler(
        patient_infos(index), patients_per_batch=b, lesions_per_patient=n, seed=seed
    )
    plan = sampler.plan(0)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        batch = collate([ds[it] for it in plan[i % len(plan)]])
        batch["images"] = torch.randint(
            0, 256, batch["images"].shape, dtype=torch.uint8, generator=gen
        )
        out.append(batch)
    return out


def whole_model_step(
    model, batches: list, device: torch.device, *, train_cfg, autocast=None
) -> dict:
    """The training loop's step without its data path, over `batches` (moved to the device
    first). Returns {"images_per_s", "optimizer_share", "optimizer_s", "step_s",
    "batch_images"}."""
    from slimp_cli.train import distributed as D
    from slimp_cli.train.batches import batch_to
    from slimp_cli.train.loop import loss_parts, parameter_groups, set_train_mode
    from slimp_cli.train.optim import make_optimizer

    model.to(device)
    set_train_mode(model)
    staged = [batch_to(b, device) for b in batches]  # uint8 images on the device
    opt = make_optimizer(
        parameter_groups(model, train_cfg.weight_decay), lr=train_cfg.lr, device=device
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    ctx = autocast if autocast is not None else torch.autocast(device.type, enabled=False)
    variant = model.config.variant
    opt_times, step_times = [], []

    def step(i):
        t0 = time.perf_counter()
        batch = batch_to(staged[i % len(staged)], device, model.preprocess)  # normalise
        with ctx:
            outputs = model(batch)
        loss = loss_parts(variant, outputs, train_cfg, D.DistInfo())["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if train_cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(trainable, train_cfg.grad_clip)
        _sync(device)
        t1 = time.perf_counter()
        opt.step()
        _sync(device)
        t2 = time.perf_counter()
        opt_times.append(t2 - t1)
        step_times.append(t2 - t0)
        return int(batch["images"].shape[0])

    rates = time_steps(step, len(batches) - 1, device)
    opt_s, step_s = mean(opt_times[1:]), mean(step_times[1:])
    return {
        "images_per_s": mean(rates),
        "optimizer_s": opt_s,
        "step_s": step_s,
        "optimizer_share": opt_s / step_s,
        "batch_images": mean([int(b["images"].shape[0]) for b in batches[1:]]),
    }


def whole_model_inference(
    model, batches: list, device: torch.device, *, batch_size: int, steps: int, autocast=None
) -> float:
    """Images/s of embed's per-batch work (image + lesion + patient features) on `batch_size`
    rows already on the device (rows of `batches`, repeated to fill the batch)."""
    from slimp_cli.data.schema import TabularBatch

    model.to(device).eval()
    size = model.preprocess.img_size
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=device)

    def rows(key):
        parts = [b[key] for b in batches if key in b]
        if not parts:
            return None
        tab = TabularBatch(*(torch.cat(f) for f in zip(*parts)))
        reps = -(-batch_size // len(tab[0]))
        tab = TabularBatch(*(torch.cat([f] * reps)[:batch_size] for f in tab))
        return tab.to(device)

    lesion_tab, patient_tab = rows("lesion_tab"), rows("patient_tab")
    ctx = autocast if autocast is not None else torch.autocast(device.type, enabled=False)

    def step(_):
        with torch.no_grad(), ctx:
            model.encode_image(images)
            if patient_tab is not None and hasattr(model, "encode_patient"):
                model.encode_patient(patient_tab)
            if lesion_tab is not None and hasattr(model, "encode_lesion"):
                model.encode_lesion(lesion_tab)
        return batch_size

    return mean(time_steps(step, steps, device))
