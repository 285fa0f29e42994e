"""Sparse Memory Finetuning (Lin et al. 2025): update only the memory slots that are specific to the new data.

The model has product-key memory layers (``hope.layers.memory_layer``; ``model.memory_layers`` in ``hope finetune``
swaps a block's MLP for one). Every other parameter is frozen, and of the memory values only the top-t slots of
each batch, ranked by TF-IDF of their accesses against a background set, receive gradient (the layer applies the
paper's masking trick ``V * mask + V.detach() - (V * mask).detach()``). Slots that general text also uses a lot
score low, so general knowledge is left alone. The optimizer is plain SGD as in the paper (no momentum, no weight
decay): with AdamW, momentum and decay would keep moving slots after they leave the top t (SMF §4).

The background statistics live in the memory layers' buffers, so they are saved with every checkpoint. When they
are empty, ``setup_data`` records them from ``background_batches`` batches of ``background_source`` (the paper:
1000 DCLM batches; here the built-in corpus by default).

Paper settings (1.3B model, N = 1M slots): t = 500 for facts, lr 2 (low) or 5 (high).
"""

from __future__ import annotations

import torch
from torch import nn

from hope.continual.finetune import FinetuneMethod, TaskLoop
from hope.data.blocks import source_blocks
from hope.layers.memory_layer import RANKINGS, memory_layers, record_background
from hope.tokenizer import Tokenizer


class SparseMemoryFinetune(FinetuneMethod):
    """Train only the memory values of the top-t TF-IDF slots of each batch, with SGD.

    Args:
        top_t: slots per batch (and memory layer) whose values train.
        ranking: ``tfidf`` (SMF) or ``tf`` (access counts only; the paper's ablation, forgets more).
        background_source: general data the background set is drawn from (a ``data.source`` spec), train split.
        background_batches: background batches |B|, each ``background_batch_size`` sequences of the run's length.
        background_batch_size: sequences per background batch.
        loop: how ``learn`` trains on a task of the retention harness (its ``lr`` is SGD's; the paper uses 2-5).
    """

    name = "sparse_memory"

    def __init__(
        self,
        top_t: int = 500,
        ranking: str = "tfidf",
        background_source: str = "default",
        background_batches: int = 100,
        background_batch_size: int = 8,
        loop: TaskLoop | None = None,
    ) -> None:
        super().__init__(loop)
        if top_t < 1 or ranking not in RANKINGS:
            raise ValueError(
                f"SparseMemoryFinetune needs top_t >= 1 and ranking in {RANKINGS} (got {top_t}, {ranking!r})."
            )
        self.top_t, self.ranking = top_t, ranking
        self.background_source, self.background_batches = background_source, background_batches
        self.background_batch_size = background_batch_size
        self._values: set[str] = set()
        self._layers: list = []

    def prepare(self, model: nn.Module) -> None:
        """Find the product-key memory layers and set their ``train_top_t`` and ranking; raise if the model has none."""
        found = memory_layers(model)
        if not found:
            raise ValueError(
                "SparseMemoryFinetune needs a model with a product-key memory layer: set "
                "model.memory_layers.blocks (e.g. [2]) and start from a checkpoint that trained it."
            )
        self._layers = [layer for _, layer in found]
        self._values = {f"{name}.values.weight" for name, _ in found}
        for layer in self._layers:
            layer.train_top_t, layer.ranking = self.top_t, self.ranking

    def trains(self, name: str) -> bool:
        """Whether ``name`` is a memory layer's value table (``<layer>.values.weight``): only those train."""
        return name in self._values

    def make_optimizer(
        self, groups: list[dict], betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8
    ) -> torch.optim.Optimizer:
        """Plain SGD at the groups' lr, weight decay forced to 0 (SMF §4)."""
        # weight decay would shrink every slot, selected or not: SMF's SGD has none
        return torch.optim.SGD([{**g, "weight_decay": 0.0} for g in groups], lr=groups[0]["lr"])

    def setup_data(self, model: nn.Module, tokenizer: Tokenizer, seq_len: int) -> None:
        """Record the TF-IDF background statistics from ``background_source`` unless the checkpoint brought them."""
        if self.ranking != "tfidf" or all(int(layer.background_batches) > 0 for layer in self._layers):
            return  # TF needs no background; or it came with the checkpoint
        inputs, _ = source_blocks(
            self.background_source, tokenizer, seq_len, self.background_batches * self.background_batch_size
        )
        record_background(model, inputs.split(self.background_batch_size))

    def step_stats(self) -> dict[str, float]:
        """Number of memory slots that received gradient at the last step (summed over layers), if any were masked."""
        masks = [layer.last_mask for layer in self._layers if layer.last_mask is not None]
        return {"trained_slots": float(sum(int(m.sum()) for m in masks))} if masks else {}
