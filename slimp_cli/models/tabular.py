"""TRACE tabular encoder (Christopoulos et al. 2025) as SLIMP uses it for lesion/patient metadata.

Tokens: one per feature. Categorical feature j -> `nn.Embedding(n_j + 1, d, padding_idx=0)`
(index 0 = missing or unknown -> a zero token). Numerical features -> one shared MLP
`Linear(n_num, d) -> SELU -> Linear(d, d * n_num)`, reshaped to n_num tokens, each multiplied by
its "present" mask (missing -> zero token). A CLS token is prepended, a post-LN transformer mixes
the tokens, and the output is the mean of the feature tokens (the CLS output is not used; the
paper pools by GAP, App. Fig. 5).

NOTE[DIFF]: TRACE feeds raw numerical values; slimp feeds values standardised with the training
data's statistics (stored in the resolved schema), missing set to 0 (DESIGN.md).

The input layers (`TraceInputs`) are a separate module so that continual pre-training can give a
new dataset new inputs while keeping the transformer (`TraceEncoder.replace_inputs`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.errors import SlimpError


class TraceInputs(nn.Module):
    """Feature tokenizer: categorical embeddings + the shared numerical MLP.

    Shape:
        categorical [n, n_cat] long, numerical [n, n_num] float, numerical_mask [n, n_num] bool
        -> tokens [n, n_cat + n_num, d]
    """

    def __init__(self, *, cardinalities: list[int], n_numerical: int, d: int) -> None:
        super().__init__()
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in cardinalities):
            raise SlimpError(
                f"categorical cardinalities must be positive ints, got {cardinalities}"
            )
        if isinstance(n_numerical, bool) or not isinstance(n_numerical, int) or n_numerical < 0:
            raise SlimpError(f"n_numerical must be a non-negative int, got {n_numerical!r}")
        if not cardinalities and n_numerical == 0:
            raise SlimpError(
                "a TRACE encoder needs at least one feature; this feature set is empty"
            )
        self.cardinalities = list(cardinalities)
        self.n_numerical = n_numerical
        self.d = d
        # One table per feature (+1 row: index 0 = missing, kept at zero by padding_idx).
        self.categorical = nn.ModuleList(
            nn.Embedding(n + 1, d, padding_idx=0) for n in self.cardinalities
        )
        self.numerical = (
            nn.Sequential(nn.Linear(n_numerical, d), nn.SELU(), nn.Linear(d, d * n_numerical))
            if n_numerical
            else None
        )

    def forward(
        self, categorical: torch.Tensor, numerical: torch.Tensor, numerical_mask: torch.Tensor
    ) -> torch.Tensor:
        n_cat = len(self.cardinalities)
        if categorical.shape[-1] != n_cat or numerical.shape[-1] != self.n_numerical:
            raise SlimpError(
                f"tabular input has {categorical.shape[-1]} categorical and {numerical.shape[-1]} "
                f"numerical columns; this encoder was built for {n_cat} and {self.n_numerical} "
                "(data encoded with a different schema?)"
            )
        tokens = [emb(categorical[:, j]) for j, emb in enumerate(self.categorical)]
        out = torch.stack(tokens, dim=1) if tokens else None
        if self.numerical is not None:
            present = numerical_mask.bool()
            # Missing values enter the MLP as 0 whatever the caller left there.
            x = torch.where(present, numerical, torch.zeros_like(numerical))
            num = self.numerical(x).view(x.shape[0], self.n_numerical, self.d)
            num = num * present.unsqueeze(-1).to(num.dtype)  # missing -> zero token
            out = num if out is None else torch.cat([out, num.to(out.dtype)], dim=1)
        return out


class TraceEncoder(nn.Module):
    """TRACE: feature tokens + CLS -> post-LN transformer -> mean of the feature tokens.

    Args:
        cardinalities: vocabulary size of each categorical/boolean feature, in encoding order
            (`schema.cardinalities(features)`).
        n_numerical: number of numerical features (`schema.n_numerical(features)`).
        d: token dimension (divisible by `n_heads`).
        n_layers, n_heads, ffn_mult, dropout: the transformer (TRACE: 1 layer, 2 heads, FFN 4d,
            GELU, post-LN).

    Shape:
        forward(categorical [n, n_cat] long, numerical [n, n_num] float,
                numerical_mask [n, n_num] bool) -> [n, d]
        Call it as `encoder(*tabular_batch)` with a `schema.TabularBatch`.

    Examples:
        >>> enc = TraceEncoder(cardinalities=[3, 2], n_numerical=4, d=16)
        >>> cat = torch.tensor([[1, 0], [3, 2]]); num = torch.randn(2, 4)
        >>> enc(cat, num, torch.ones(2, 4, dtype=torch.bool)).shape
        torch.Size([2, 16])
    """

    def __init__(
        self,
        *,
        cardinalities: list[int],
        n_numerical: int,
        d: int,
        n_layers: int = 1,
        n_heads: int = 2,
        ffn_mult: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("d", d),
            ("n_layers", n_layers),
            ("n_heads", n_heads),
            ("ffn_mult", ffn_mult),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SlimpError(f"TRACE {name} must be a positive int, got {value!r}")
        if d % n_heads:
            raise SlimpError(f"TRACE d ({d}) must be divisible by n_heads ({n_heads})")
        if not 0.0 <= dropout < 1.0:
            raise SlimpError(f"TRACE dropout must be in [0, 1), got {dropout}")
        self.d = d
        self.inputs = TraceInputs(cardinalities=cardinalities, n_numerical=n_numerical, d=d)
        # rtdl-style init: uniform in +-1/sqrt(d), the scale of a fresh Linear's output.
        bound = 1 / math.sqrt(d)
        self.cls_token = nn.Parameter(torch.empty(1, 1, d).uniform_(-bound, bound))
        layer = nn.TransformerEncoderLayer(
            d,
            n_heads,
            dim_feedforward=ffn_mult * d,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=False,  # post-LN, as TRACE
        )
        self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)

    def forward(
        self, categorical: torch.Tensor, numerical: torch.Tensor, numerical_mask: torch.Tensor
    ) -> torch.Tensor:
        tokens = self.inputs(categorical, numerical, numerical_mask)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        out = self.transformer(torch.cat([cls, tokens], dim=1))
        return out[:, 1:].mean(dim=1)

    def input_parameters(self) -> list[nn.Parameter]:
        """Input-embedding parameters (categorical tables, numerical MLP, CLS token).

        What `adapt --tune embeddings` trains (paper App. D: "the input-embedding layers of the
        two TRACE tabular encoders"); the transformer stays frozen.
        """
        return [*self.inputs.parameters(), self.cls_token]

    def replace_inputs(self, *, cardinalities: list[int], n_numerical: int) -> None:
        """Give the encoder fresh input layers for another feature set; keep everything else.

        The transformer works on d-dimensional tokens whatever their number, so it is shared
        across schemas; only the per-feature tables and the numerical MLP depend on the columns.
        """
        device = self.cls_token.device
        self.inputs = TraceInputs(
            cardinalities=cardinalities, n_numerical=n_numerical, d=self.d
        ).to(device)
