"""The papers' linear probe: a torch linear layer on frozen features, (B)CE + AdamW
(`probe --classifier linear`; the default `logreg` is scikit-learn's, see eval/probe.py).

- SLIMP (Sec. 4.2): "linear probing with binary cross entropy loss (BCE) and the AdamW
  optimization algorithm"; App. D trains a baseline's linear classifier "for 150 epochs
  (following the SLIMP linear probing setting)". Learning rate, weight decay and batch size are
  not given: slimp takes SM3's (below).
- SM3 (Sec. IV-A-2): lr 1e-3, batch size 128, 50 epochs, AdamW with default parameters
  (betas 0.9 / 0.999, weight decay 0.01), random resized crop and horizontal flip.

Recipe as run here: features standardised with the training rows' mean and std
(scikit-learn's StandardScaler), weight and bias start at zero (the loss is convex, so nothing
depends on an initial draw), mini-batches in a seeded order, BCE on one logit for two classes,
cross-entropy on one logit per class otherwise (the classes seen in training; a class absent
from training gets probability 0, as with logreg). Weight decay on the weight only. Runs on the
CPU in float32: with the same seed and thread count the result is bitwise the same.

NOTE[DIFF]: no augmentation. SM3's crop / flip change the image the frozen CNN sees, so each
epoch the probe would read a new feature vector of every image; a feature store holds one
embedding per image (of the un-augmented, resized image), so doing it honestly needs the
encoder in the loop, which a probe on cached features is meant to avoid. Noise added to the
cached features would be a different regulariser, not the paper's augmentation, so none is
added (docs/method.md, "The papers' linear probe").
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.preprocessing import StandardScaler

from ..core.errors import SlimpError


@dataclass(frozen=True, kw_only=True)
class LinearProbeConfig:
    """Optimisation of the linear probe. `batch_size` >= the training rows = full batch."""

    epochs: int
    lr: float
    weight_decay: float
    batch_size: int

    def __post_init__(self) -> None:
        for name, low in (("epochs", 1), ("batch_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SlimpError(f"--probe-{name.replace('_', '-')} must be an integer >= {low}")
        for name, positive in (("lr", True), ("weight_decay", False)):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
                or (positive and value == 0)
            ):
                raise SlimpError(
                    f"--probe-{name.replace('_', '-')} must be a finite number "
                    f"{'> 0' if positive else '>= 0'} (got {value!r})"
                )

    def to_dict(self) -> dict:
        return {
            "epochs": self.epochs,
            "lr": float(self.lr),
            "weight_decay": float(self.weight_decay),
            "batch_size": self.batch_size,
        }


RECIPES = {
    "slimp": LinearProbeConfig(epochs=150, lr=1e-3, weight_decay=0.01, batch_size=128),
    "sm3": LinearProbeConfig(epochs=50, lr=1e-3, weight_decay=0.01, batch_size=128),
}


def recipe_for(variant: str) -> str:
    """The paper whose probe fits a store: SM3's for SM3 stores, SLIMP's otherwise."""
    return "sm3" if variant == "sm3" else "slimp"


def probe_config(
    recipe: str,
    *,
    epochs: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    batch_size: int | None = None,
) -> LinearProbeConfig:
    """A recipe of RECIPES with the values given (not None) replacing its own."""
    if recipe not in RECIPES:
        raise SlimpError(f"--probe-recipe {recipe!r}: choose one of {', '.join(RECIPES)}")
    base = RECIPES[recipe]
    return LinearProbeConfig(
        epochs=base.epochs if epochs is None else epochs,
        lr=base.lr if lr is None else lr,
        weight_decay=base.weight_decay if weight_decay is None else weight_decay,
        batch_size=base.batch_size if batch_size is None else batch_size,
    )


class LinearProbe:
    """A fitted probe: standardisation, then one logit (two classes) or one per class.

    Build with `fit_linear_probe`; `predict_proba(x)` gives [m, n_classes].
    """

    def __init__(
        self,
        *,
        scaler: StandardScaler,
        weight: np.ndarray,
        bias: np.ndarray,
        classes: np.ndarray,
        n_classes: int,
    ) -> None:
        if weight.shape[0] != bias.shape[0]:
            raise ValueError("weight [K, D] and bias [K] disagree")
        self.scaler, self.weight, self.bias = scaler, weight, bias
        self.classes, self.n_classes = np.asarray(classes, dtype=np.int64), int(n_classes)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Shape: x [m, D] -> [m, n_classes] float64 (rows sum to 1)."""
        z = self.scaler.transform(np.asarray(x, dtype=np.float32)).astype(np.float32)
        with torch.no_grad(), _one_thread():
            logits = torch.from_numpy(z) @ torch.from_numpy(self.weight).T + torch.from_numpy(
                self.bias
            )
            if len(self.classes) == 2:
                p1 = torch.sigmoid(logits[:, 0]).double()
                seen = torch.stack([1.0 - p1, p1], dim=1)
            else:
                seen = torch.softmax(logits.double(), dim=1)
        out = np.zeros((len(z), self.n_classes))
        out[:, self.classes] = seen.numpy()
        return out


def fit_linear_probe(
    x: np.ndarray,
    y: np.ndarray,
    *,
    n_classes: int,
    config: LinearProbeConfig,
    seed: int = 0,
) -> LinearProbe:
    """Train the probe on frozen features (see the module doc for the recipe).

    Shape: x [n, D] float, y [n] ints in 0..n_classes-1 with at least two distinct values.
    The global torch RNG is not touched: the batch order comes from its own generator.
    """
    y = np.asarray(y, dtype=np.int64)
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError("the linear probe needs at least two classes in training")
    scaler = StandardScaler().fit(np.asarray(x, dtype=np.float32))
    xt = torch.from_numpy(scaler.transform(np.asarray(x, dtype=np.float32)).astype(np.float32))
    index = torch.from_numpy(np.searchsorted(classes, y))
    binary = len(classes) == 2
    k = 1 if binary else len(classes)
    weight = torch.zeros(k, xt.shape[1], requires_grad=True)
    bias = torch.zeros(k, requires_grad=True)
    opt = torch.optim.AdamW(
        [
            {"params": [weight], "weight_decay": config.weight_decay},
            {"params": [bias], "weight_decay": 0.0},
        ],
        lr=config.lr,
    )
    loss_fn = torch.nn.BCEWithLogitsLoss() if binary else torch.nn.CrossEntropyLoss()
    target = index.float() if binary else index
    gen = torch.Generator().manual_seed(int(seed))
    n = len(xt)
    with _one_thread():
        for _ in range(config.epochs):
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, config.batch_size):
                rows = order[start : start + config.batch_size]
                logits = xt[rows] @ weight.T + bias
                loss = loss_fn(logits[:, 0] if binary else logits, target[rows])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return LinearProbe(
        scaler=scaler,
        weight=weight.detach().numpy().copy(),
        bias=bias.detach().numpy().copy(),
        classes=classes,
        n_classes=n_classes,
    )


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """One intra-op torch thread while the probe trains (see the module doc), then as before."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def linear_probe_proba(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    *,
    n_classes: int,
    config: LinearProbeConfig,
    seed: int = 0,
) -> np.ndarray:
    """Fit on the training rows, return the test rows' class probabilities [m, n_classes]."""
    probe = fit_linear_probe(x_train, y_train, n_classes=n_classes, config=config, seed=seed)
    return probe.predict_proba(x_test)
