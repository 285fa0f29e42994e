"""Gradual unfreezing (ULMFiT, Howard & Ruder 2018): train the top layer first, then thaw one layer further down
every ``unfreeze_every`` steps, so the lower, more general layers change last and least.

At step s (counted per task in the retention harness, the global step in ``hope finetune``) the parameters of depth
``d >= n_layer + 1 − s // unfreeze_every`` train (depths as in ``hope.continual.params.depth``: head and final norm
first, then block n_layer − 1, ..., block 0, the embedding last). Frozen layers still take part in backward, but
their gradients are dropped before clipping and the step, so AdamW leaves them (and their weight decay) alone;
parameter trainability itself stays fixed, which keeps resume and DeepSpeed simple. Combine with layer-wise lr
decay through ``decay`` (ULMFiT: 1/2.6), as ULMFiT does.
"""

from __future__ import annotations

from torch import nn

from hope.continual.finetune import TaskLoop
from hope.continual.methods.llrd import LayerwiseLRDecay
from hope.continual.params import depth


class GradualUnfreezing(LayerwiseLRDecay):
    """Thaw one layer per ``unfreeze_every`` steps from the head down (optionally with layer-wise lr decay).

    Args:
        unfreeze_every: optimizer steps between thawing one more layer.
        decay: layer-wise lr decay (1: none; ULMFiT 1/2.6).
        loop: how ``learn`` trains on a task of the retention harness.
    """

    name = "gradual_unfreezing"

    def __init__(self, unfreeze_every: int = 50, decay: float = 1.0, loop: TaskLoop | None = None) -> None:
        super().__init__(decay, loop)
        if unfreeze_every < 1:
            raise ValueError(f"GradualUnfreezing unfreeze_every={unfreeze_every} must be >= 1.")
        self.unfreeze_every = unfreeze_every
        self._lowest = 0

    def lowest_thawed(self, n_layer: int, step: int) -> int:
        """The lowest depth that trains at ``step``."""
        return max(0, n_layer + 1 - step // self.unfreeze_every)

    def before_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Drop the gradients of the layers still frozen at ``step`` (depth below ``lowest_thawed``)."""
        n_layer = len(model.blocks)
        self._lowest = self.lowest_thawed(n_layer, step)
        for name, p in model.named_parameters():
            if depth(name, n_layer) < self._lowest:
                p.grad = None

    def step_stats(self) -> dict[str, float]:
        """The lowest thawed depth at the last step, logged as ``train/lowest_thawed_depth``."""
        return {"lowest_thawed_depth": float(self._lowest)}
