"""Layer-wise learning-rate decay (ULMFiT's "discriminative fine-tuning", Howard & Ruder 2018; ELECTRA, BEiT).

Lower layers hold more general features, so they move less: a parameter at depth d (``hope.continual.params.depth``:
embedding 0, block i at i + 1, final norm and head at n_layer + 1) trains at::

    lr_d = lr · decay ** (n_layer + 1 − d)

e.g. with 4 blocks and decay 0.5: head and final norm ``lr``, block 3 ``lr/2``, block 2 ``lr/4``, block 1 ``lr/8``,
block 0 ``lr/16``, embedding ``lr/32``. ULMFiT used decay 1/2.6. With tied embeddings the head is the embedding
(depth 0). The multipliers apply on top of ``group_lr`` patterns and follow the run's warmup/cosine schedule.
"""

from __future__ import annotations

from torch import nn

from hope.continual.finetune import FinetuneMethod, TaskLoop
from hope.continual.params import depth


class LayerwiseLRDecay(FinetuneMethod):
    """Full finetuning with the lr decaying geometrically from the head down to the embedding.

    Args:
        decay: lr ratio between a layer and the one above it (1: no decay).
        loop: how ``learn`` trains on a task of the retention harness.
    """

    name = "llrd"

    def __init__(self, decay: float = 0.8, loop: TaskLoop | None = None) -> None:
        super().__init__(loop)
        if not 0 < decay <= 1:
            raise ValueError(f"LayerwiseLRDecay decay={decay} must be in (0, 1].")
        self.decay = decay

    def lr_scales(self, model: nn.Module) -> dict[str, float]:
        """lr multiplier ``decay ** (n_layer + 1 - depth)`` per parameter: 1 at the head, smallest at the embedding."""
        top = len(model.blocks) + 1
        return {name: self.decay ** (top - depth(name, len(model.blocks))) for name, _ in model.named_parameters()}
