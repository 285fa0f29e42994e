"""LoRA as a continual-learning method: adapters (``hope.layers.lora``) on chosen linear layers, the rest frozen."""

from __future__ import annotations

import math

import torch
from torch import nn

from hope.continual.finetune import FinetuneMethod, TaskLoop
from hope.continual.params import matches_any
from hope.layers.lora import apply_lora, lora_modules


class LoRA(FinetuneMethod):
    """Train low-rank adapters on chosen linear layers; everything else stays frozen.

    Args:
        rank: adapter rank r (SMF's sweep: 32-256 on a 1.3B model; 4-16 suits the debug models).
        alpha: scale numerator; the update is (alpha / rank) B A.
        dropout: dropout on the adapter's input.
        targets: module-name patterns of the linear layers to adapt (globs, or regex after ``re:``); the default
            takes every linear layer of every block (attention and MLP), not the embedding or the head.
        merge_after_task: in the retention harness, merge the adapter into the weights after each task and start
            the next task from a fresh adapter (False: one adapter learns the whole sequence).
        loop: how ``learn`` trains on a task of the retention harness.
    """

    name = "lora"

    def __init__(
        self,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        targets: list[str] | None = None,
        merge_after_task: bool = False,
        loop: TaskLoop | None = None,
    ) -> None:
        super().__init__(loop)
        if rank < 1:
            raise ValueError(f"LoRA rank={rank} must be >= 1.")
        self.rank, self.alpha, self.dropout = rank, alpha, dropout
        self.targets = targets if targets is not None else ["blocks.*"]
        self.merge_after_task = merge_after_task
        self._modules: list[str] = []

    def prepare(self, model: nn.Module) -> None:
        """Wrap every linear layer whose module name matches a ``targets`` pattern; raise if none matches."""
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        self._modules = [n for n in linears if matches_any(n, self.targets)]
        if not self._modules:
            raise ValueError(
                f"LoRA targets {self.targets} match no linear layer; linear layers are named like {linears[:4]}."
            )
        apply_lora(model, self._modules, self.rank, self.alpha, self.dropout)

    def trains(self, name: str) -> bool:
        """Whether ``name`` is an adapter matrix (``lora_a``/``lora_b``): only those train."""
        return name.endswith((".lora_a", ".lora_b"))

    def structure(self) -> dict:
        """The adapted module names, rank and alpha, so ``load_finetuned`` can rebuild the LoRA layers."""
        return {"lora": {"modules": self._modules, "rank": self.rank, "alpha": self.alpha}}

    def end_task(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        """With ``merge_after_task``, merge each adapter into its weight and restart it from B = 0."""
        if self.merge_after_task:
            for module in lora_modules(model):
                module.merge()
                module.merged = False  # the weight keeps the update; the adapter restarts from B = 0
                with torch.no_grad():
                    nn.init.kaiming_uniform_(module.lora_a, a=math.sqrt(5))
                    module.lora_b.zero_()
