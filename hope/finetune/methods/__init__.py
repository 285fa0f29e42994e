"""Continual-learning methods, one per file; each plugs into ``hope finetune`` (``method:``) and the retention
harness (a ``ContinualMethod``). See ``base.py`` for the hooks."""

from hope.finetune.methods.base import FinetuneMethod, TaskLoop
from hope.finetune.methods.cms_levels import CMSLevels
from hope.finetune.methods.ewc import EWC
from hope.finetune.methods.full import EpochFinetune, FullFinetune
from hope.finetune.methods.gradual_unfreezing import GradualUnfreezing
from hope.finetune.methods.llrd import LayerwiseLRDecay
from hope.finetune.methods.lora import LoRA
from hope.finetune.methods.replay import Replay
from hope.finetune.methods.sparse_memory import SparseMemoryFinetune

__all__ = [
    "CMSLevels",
    "EWC",
    "EpochFinetune",
    "FinetuneMethod",
    "FullFinetune",
    "GradualUnfreezing",
    "LayerwiseLRDecay",
    "LoRA",
    "Replay",
    "SparseMemoryFinetune",
    "TaskLoop",
]
