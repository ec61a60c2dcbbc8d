"""The metadata encoder: one embedding per categorical field, concatenated, MLP -> 256 (eq. 10)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


class MetadataEncoder(nn.Module):
    """X_meta = F_meta(Concat[E^(1)[m^(1)], ..., E^(F)[m^(F)]]) (eq. 10).

    Index 0 of every field is "unknown"; `padding_idx` is deliberately not set, so the
    unknown value learns an embedding like any other. With no fields the encoder has no
    parameters and returns zeros (the model then leaves it out and uses the image only).
    """

    def __init__(
        self,
        cardinalities: tuple[tuple[str, int], ...],
        embed_dim: int = 32,
        out_dim: int = 256,
    ) -> None:
        super().__init__()
        for field, vocab_size in cardinalities:
            if vocab_size < 1:
                raise ValueError(f"metadata field {field!r}: vocabulary size {vocab_size} < 1")
        self.fields = tuple(field for field, _ in cardinalities)
        self.out_dim = out_dim
        # E^(f) in R^{V_f x d_f}
        self.embeddings = nn.ModuleDict({f: nn.Embedding(v, embed_dim) for f, v in cardinalities})
        self.mlp: nn.Module | None = None
        if self.fields:
            # F_meta: the two-layer feedforward network of eq. (10)
            self.mlp = nn.Sequential(
                nn.Linear(len(self.fields) * embed_dim, out_dim),
                nn.ReLU(),
                nn.Linear(out_dim, out_dim),
            )

    def forward(self, meta: Tensor) -> Tensor:
        """meta: LongTensor [B, F], column f holds field f's index. Returns [B, out_dim]."""
        self._check(meta)
        if self.mlp is None:
            return meta.new_zeros(meta.shape[0], self.out_dim, dtype=torch.float32)
        return self.mlp(torch.cat(self._embedded(meta), dim=1))

    def forward_with_tokens(self, meta: Tensor) -> tuple[Tensor, Tensor]:
        """X_meta [B, out_dim] and one token per field [B, F, out_dim] (token fusions).

        Token f is field f's term in F_meta's first layer, W1[:, f] E^(f)[m^(f)]: the
        field's embedding projected to out_dim by weights the encoder already has, so a
        token fusion adds no parameters here (and their sum + bias is that layer's input
        to the ReLU)."""
        self._check(meta)
        if self.mlp is None:
            raise ValueError("a metadata encoder without fields has no tokens")
        embedded = self._embedded(meta)
        first = self.mlp[0]
        per_field = first.weight.unflatten(1, (len(self.fields), -1))  # [out, F, d]
        tokens = torch.einsum("bfd,ofd->bfo", torch.stack(embedded, dim=1), per_field)
        return self.mlp(torch.cat(embedded, dim=1)), tokens

    def vocab_sizes(self) -> dict[str, int]:
        """Rows of each field's table (its vocabulary size, "unknown" included)."""
        return {f: self.embeddings[f].num_embeddings for f in self.fields}

    def use_sparse_gradients(self, fields: Iterable[str]) -> list[nn.Parameter]:
        """Make these fields' tables produce row-sparse gradients (only the rows a batch
        looked up), the others dense; returns the sparse tables' weights. Forward values are
        the same either way; a sparse gradient needs a sparse optimiser (`trainer.optimizers`)."""
        chosen = set(fields)
        for f in self.fields:
            self.embeddings[f].sparse = f in chosen
        return [self.embeddings[f].weight for f in self.fields if f in chosen]

    def _check(self, meta: Tensor) -> None:
        if meta.dim() != 2 or meta.shape[1] != len(self.fields):
            raise ValueError(
                f"metadata tensor has shape {tuple(meta.shape)}, expected [B, {len(self.fields)}]"
                f" for fields {self.fields}"
            )

    def _embedded(self, meta: Tensor) -> list[Tensor]:
        return [self.embeddings[f](meta[:, i]) for i, f in enumerate(self.fields)]
