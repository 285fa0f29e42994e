"""LoRA (Hu et al. 2021): a frozen linear layer plus a trainable low-rank update, W x + (alpha / r) B A x.

``LoRALinear`` subclasses ``nn.Linear`` and keeps the *same* ``weight`` Parameter as the layer it wraps, so base
parameter names are unchanged (``blocks.0.attn.qkv.weight``): pretrained checkpoints load into a LoRA model, and a
merged-then-removed model (``remove_lora``) is a plain ``HopeLM`` again. ``B`` starts at zero, so a fresh adapter
does not change the model. While training, the base weights never change (they do not require grad): they stay
bit-identical. ``merge`` adds (alpha / r) B A into the weight for inference; ``unmerge`` subtracts it again (exact
up to float rounding, as in peft).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LoRALinear", "apply_lora", "lora_modules", "merge_lora", "remove_lora", "unmerge_lora"]


class LoRALinear(nn.Linear):
    """``base`` (its weight and bias are shared, not copied) plus a rank-``rank`` adapter ``lora_b @ lora_a``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        nn.Module.__init__(self)  # not nn.Linear.__init__: that would allocate a new weight
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # peft's init; B = 0 keeps the model unchanged
        self.dropout = nn.Dropout(dropout)
        self.merged = False

    def delta(self) -> torch.Tensor:
        """The adapter's weight update (alpha / r) B A, [out_features, in_features]."""
        return (self.lora_b @ self.lora_a) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """W x + b + (alpha / r) B A dropout(x); just W x + b once merged (the update is in W)."""
        y = F.linear(x, self.weight, self.bias)
        if self.merged:
            return y
        return y + F.linear(F.linear(self.dropout(x), self.lora_a), self.lora_b) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update (alpha / r) B A into the shared weight, once; the adapter then stops adding it."""
        if not self.merged:
            self.weight += self.delta()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract a merged update from the weight again (exact up to float rounding)."""
        if self.merged:
            self.weight -= self.delta()
            self.merged = False

    def extra_repr(self) -> str:
        """``nn.Linear``'s summary plus rank, alpha and whether the adapter is merged."""
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def apply_lora(model: nn.Module, module_names: list[str], rank: int, alpha: float, dropout: float = 0.0) -> None:
    """Wrap each named ``nn.Linear`` of ``model`` in a ``LoRALinear`` (already wrapped ones are kept)."""
    for name in module_names:
        if not isinstance(model.get_submodule(name), LoRALinear):
            _set_module(model, name, LoRALinear(model.get_submodule(name), rank, alpha, dropout))


def lora_modules(model: nn.Module) -> list[LoRALinear]:
    """Every ``LoRALinear`` of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def merge_lora(model: nn.Module) -> None:
    """Merge every adapter of ``model`` into its weight (for inference)."""
    for module in lora_modules(model):
        module.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Take every merged adapter of ``model`` back out of its weight."""
    for module in lora_modules(model):
        module.unmerge()


def remove_lora(model: nn.Module) -> None:
    """Merge every adapter and put plain ``nn.Linear`` layers back (same weight Parameters): a plain model."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            module.merge()
            plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
            plain.weight, plain.bias = module.weight, module.bias
            _set_module(model, name, plain)
