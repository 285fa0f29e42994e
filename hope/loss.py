"""The training objective: next-token cross entropy, shared by pretraining, finetuning, test-time learning and EWC."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def next_token_loss(logits_BTV: torch.Tensor, labels_BT: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross entropy in float32 over the (padded) vocabulary; label -100 is ignored."""
    return F.cross_entropy(
        logits_BTV.flatten(0, 1).float(), labels_BT.flatten(), ignore_index=-100, reduction=reduction
    )
