"""A product-key memory layer (Lample et al. 2019; Berges et al. 2024) that can replace a block's MLP, with the slot
access statistics and the sparse update of Sparse Memory Finetuning (Lin et al. 2025, "SMF").

Forward, per head h (SMF §3, Berges et al. §3)::

    q = W_q x                                      # [heads, key_dim], split in two halves q1, q2
    I = TopK(K q, k)                               # product keys: top-k of each half's n_keys sub-keys, then the
                                                   #   top-k of the k*k sums; slot = i1 * n_keys + i2 (N = n_keys^2)
    s = softmax(K_I q)
    y = sum_h s V_I                                # the N x value_dim value table is shared by the heads
    out = W_2 (y * silu(W_1 x))

Sparse update (SMF §4). ``train_top_t > 0`` makes a training forward rank the slots this batch accessed by TF-IDF
against a background set and let gradient reach only the values of the top t (every accessed slot still takes
part in the forward pass), with the paper's masking trick on the value table::

    V = V * mask + V.detach() - (V * mask).detach()     # same value, gradient only through V * mask

    score(i) = c(i) / sum_j c(j) * log((|B| + 1) / (df(i) + 1))

``c(i)`` counts accesses to slot i in the current batch, ``|B|`` is the number of background batches and ``df(i)``
how many of them accessed slot i. The background statistics are persistent buffers (``background_df``,
``background_batches``), so they are stored in every checkpoint with the weights; ``record_background`` fills
them from general-data batches (the paper uses 1000 DCLM batches).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

RANKINGS = ("tfidf", "tf")


@dataclass
class MemoryLayerConfig:
    """Where product-key memory layers replace MLPs, and their sizes (SMF: N = 1M slots, k = 32, 4 heads)."""

    blocks: list[int] = field(default_factory=list)
    """Indices of the blocks whose MLP becomes a memory layer (SMF: block 12 of 22)."""
    n_keys: int = 64
    """Sub-keys per half of a product key; the memory has n_keys**2 slots."""
    heads: int = 4
    """Memory heads; each has its own query projection and keys, the value table is shared."""
    k: int = 8
    """Slots read per token and head."""
    key_dim: int = 64
    """Query/key width per head (even: it is split into the two product halves)."""
    value_dim: int | None = None
    """Width of the values and of the gate W_1; None means the model width."""

    def __post_init__(self) -> None:
        if self.key_dim % 2:
            raise ValueError(f"memory_layers.key_dim={self.key_dim} must be even (two product-key halves).")
        if not 1 <= self.k <= self.n_keys:
            raise ValueError(f"memory_layers.k={self.k} must be in 1..n_keys={self.n_keys}.")
        if self.heads < 1:
            raise ValueError(f"memory_layers.heads={self.heads} must be >= 1.")


class ProductKeyMemory(nn.Module):
    """Drop-in replacement of an MLP: ``[B, T, dim] -> [B, T, dim]`` (see the module docstring)."""

    def __init__(
        self, dim: int, n_keys: int = 64, heads: int = 4, k: int = 8, key_dim: int = 64, value_dim: int | None = None
    ) -> None:
        super().__init__()
        self.n_keys, self.heads, self.k, self.key_dim = n_keys, heads, k, key_dim
        self.n_slots = n_keys * n_keys
        value_dim = value_dim or dim
        self.query = nn.Linear(dim, heads * key_dim, bias=False)
        self.keys = nn.Parameter(torch.empty(heads, 2, n_keys, key_dim // 2))
        self.values = nn.Embedding(self.n_slots, value_dim)
        self.gate = nn.Linear(dim, value_dim, bias=False)
        self.down = nn.Linear(value_dim, dim, bias=False)
        self.register_buffer("background_df", torch.zeros(self.n_slots))
        self.register_buffer("background_batches", torch.zeros((), dtype=torch.long))
        self.train_top_t = 0
        """> 0: training forwards let gradient reach only the values of the top-t slots of the batch (SMF)."""
        self.ranking = "tfidf"
        """How slots are ranked for the sparse update: ``tfidf`` (SMF) or ``tf`` (access counts only, an ablation)."""
        self.last_counts: torch.Tensor | None = None  # slot accesses of the last forward [n_slots]
        self.last_mask: torch.Tensor | None = None  # slots the last sparse training forward let train [n_slots]
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        """Uniform sub-keys (Lample et al.), values N(0, 1 / value_dim), linear weights N(0, std^2)."""
        bound = 1 / math.sqrt(self.key_dim // 2)
        nn.init.uniform_(self.keys, -bound, bound)  # Lample et al.: uniform sub-keys
        nn.init.normal_(self.values.weight, std=self.values.weight.shape[1] ** -0.5)
        for linear in (self.query, self.gate, self.down):
            nn.init.normal_(linear.weight, std=std)

    def lookup(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Slot indices [B, T, heads, k] and their softmax weights (product-key top-k)."""
        B, T, _ = x.shape
        q = self.query(x).view(B, T, self.heads, 2, self.key_dim // 2)
        half_scores = torch.einsum("bthpd,hpnd->bthpn", q, self.keys)  # [B, T, h, 2, n_keys]
        s1, i1 = half_scores[..., 0, :].topk(self.k, dim=-1)
        s2, i2 = half_scores[..., 1, :].topk(self.k, dim=-1)
        pair_scores = (s1.unsqueeze(-1) + s2.unsqueeze(-2)).flatten(-2)  # [B, T, h, k*k]
        scores, best = pair_scores.topk(self.k, dim=-1)
        slots = i1.gather(-1, best // self.k) * self.n_keys + i2.gather(-1, best % self.k)
        return slots, scores.softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """down(weighted top-k slot values * silu(gate(x))) [B, T, dim]; records slot counts and the SMF mask."""
        slots, weights = self.lookup(x)
        with torch.no_grad():
            self.last_counts = torch.bincount(slots.flatten(), minlength=self.n_slots)
        table = self.values.weight
        if self.train_top_t > 0 and self.training and torch.is_grad_enabled():
            mask = self.slot_mask(self.last_counts, self.train_top_t).to(table.dtype).unsqueeze(1)
            table = table * mask + table.detach() - (table * mask).detach()  # SMF's masking trick
            self.last_mask = mask.squeeze(1).bool()
        B, T = x.shape[:2]
        y = F.embedding_bag(
            slots.reshape(B * T, -1), table, per_sample_weights=weights.reshape(B * T, -1), mode="sum"
        ).view(B, T, -1)  # sums over heads and the k slots each
        return self.down(y * F.silu(self.gate(x)))

    # -- SMF slot ranking ---------------------------------------------------------------------------------------------
    def slot_scores(self, counts: torch.Tensor) -> torch.Tensor:
        """TF-IDF (or TF) score of every slot for one batch's access ``counts``."""
        tf = counts.float() / counts.sum().clamp_min(1)
        if self.ranking == "tf":
            return tf
        idf = torch.log((self.background_batches.float() + 1) / (self.background_df + 1))
        return tf * idf

    def slot_mask(self, counts: torch.Tensor, top_t: int) -> torch.Tensor:
        """The top-``top_t`` accessed slots by score (fewer if fewer were accessed), as a bool mask [n_slots]."""
        scores = self.slot_scores(counts).masked_fill(counts == 0, -math.inf)
        top = scores.topk(min(top_t, int((counts > 0).sum()))).indices
        return torch.zeros_like(counts, dtype=torch.bool).index_fill_(0, top, True)


def memory_layers(model: nn.Module) -> list[tuple[str, ProductKeyMemory]]:
    """``(name, layer)`` of every product-key memory in ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ProductKeyMemory)]


def swap_mlp_for_memory(model: nn.Module, config: MemoryLayerConfig) -> list[str]:
    """Replace ``model.blocks[b].mlp`` by a fresh ``ProductKeyMemory`` for each ``b`` in ``config.blocks`` (kept
    as is where it already is one). Returns the names of the memory layers."""
    names = []
    for b in config.blocks:
        if not -len(model.blocks) <= b < len(model.blocks):
            raise ValueError(f"memory_layers.blocks: block {b} does not exist (the model has {len(model.blocks)}).")
        block = model.blocks[b]
        if not hasattr(block, "mlp"):
            raise ValueError(f"block {b} ({type(block).__name__}) has no `mlp` to replace with a memory layer.")
        if not isinstance(block.mlp, ProductKeyMemory):
            device = next(block.parameters()).device
            block.mlp = ProductKeyMemory(
                model.config.n_embd, config.n_keys, config.heads, config.k, config.key_dim, config.value_dim
            ).to(device)
        names.append(f"blocks.{b % len(model.blocks)}.mlp")
    return names


@torch.no_grad()
def record_background(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Set every memory layer's background statistics from ``batches`` of token ids [B, T]: ``df(i)`` = number of
    batches that accessed slot i. Returns the number of batches."""
    layers = [m for _, m in memory_layers(model)]
    if not layers:
        raise ValueError("the model has no product-key memory layer (see swap_mlp_for_memory).")
    for layer in layers:
        layer.background_df.zero_()
        layer.background_batches.zero_()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for idx in batches:
        model(idx.to(device))
        for layer in layers:
            layer.background_df += (layer.last_counts > 0).float()
            layer.background_batches += 1
    model.train(was_training)
    return int(layers[0].background_batches)
