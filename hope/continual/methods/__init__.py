"""Continual-learning methods, one per file. ``InContext`` learns nothing (the test-time-learning baseline);
``TestTimeLearning`` and ``DynamicEvaluation`` (``online.py``) learn a task by reading it; every other method is a
``hope.continual.finetune.FinetuneMethod``, which runs in ``hope finetune`` (``method:``) and in the retention harness
(``hope eval retention --method NAME``)."""

from hope.continual.finetune import FinetuneMethod, TaskLoop
from hope.continual.methods.cms_levels import CMSLevels
from hope.continual.methods.ewc import EWC
from hope.continual.methods.full import EpochFinetune, FullFinetune
from hope.continual.methods.gradual_unfreezing import GradualUnfreezing
from hope.continual.methods.in_context import InContext
from hope.continual.methods.llrd import LayerwiseLRDecay
from hope.continual.methods.lora import LoRA
from hope.continual.methods.online import DynamicEvaluation, TestTimeLearning
from hope.continual.methods.replay import Replay
from hope.continual.methods.sparse_memory import SparseMemoryFinetune

__all__ = [
    "CMSLevels",
    "DynamicEvaluation",
    "EWC",
    "EpochFinetune",
    "FinetuneMethod",
    "FullFinetune",
    "GradualUnfreezing",
    "InContext",
    "LayerwiseLRDecay",
    "LoRA",
    "Replay",
    "SparseMemoryFinetune",
    "TaskLoop",
    "TestTimeLearning",
]
