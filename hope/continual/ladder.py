"""The five-pieces ladder (issue 16): the continual-learning method of each rung, all on one loop.

=====  ==========================================  ================================================================
stage  pieces                                      built as
=====  ==========================================  ================================================================
(a)    naive finetuning                            ``FullFinetune``, lr ``loop.lr``
(b)    LoRA                                        ``LoRA``, lr ``lora_lr``
(c)    LoRA + replay                               ``Compose([LoRA, Replay])``, lr ``lora_lr``
(d)    LoRA + replay + layer-wise lr decay         ``Compose([LoRA, Replay, LayerwiseLRDecay])``: the decay scales
                                                   the adapters' lrs by their block's depth
(e)    (d) + gap-focused self-study + a learned    ``Compose([LoRA, Replay, LayerwiseLRDecay, study_piece(...)])``
       study strategy
=====  ==========================================  ================================================================

Every stage trains the same epochs, batch and sequence length from the same seed, so each takes the same number of
optimizer steps per task; replay appends its rows to the same batches, gap-focused study fills an epoch with as many
blocks as a uniform one. Only the lr differs, between full finetuning (``loop.lr``) and the adapters (``lora_lr``),
as ``hope.evaluation.retention.compare`` tunes them. ``GapStudy`` quizzes itself on a task's study items, which
only a suite that writes them has (``SyntheticFacts``); on a suite without them (``LocalDomains``) stage (e) is
stage (d): there is nothing for the study pieces to select from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from hope.continual.finetune import FinetuneMethod, TaskLoop
from hope.continual.methods import Compose, FullFinetune, GapStudy, LayerwiseLRDecay, LoRA, Replay

STAGES = ("a", "b", "c", "d", "e")
PIECES = {
    "a": "naive finetuning",
    "b": "LoRA",
    "c": "LoRA + replay",
    "d": "LoRA + replay + LLRD",
    "e": "LoRA + replay + LLRD + GapStudy + learned study strategy",
}


@dataclass
class LadderSettings:
    """The loop every stage shares and each piece's settings."""

    loop: TaskLoop = field(default_factory=lambda: TaskLoop(epochs=4))
    """The loop every stage shares (epochs, batch, seq_len, ...); its ``lr`` is naive finetuning's, stage (a)
    (compare.py's tuned value for the debug models), and its ``seed`` is replaced by each run's."""
    lora_lr: float = 3e-3
    """AdamW lr of the adapters, stages (b)-(e) (compare.py's tuned value)."""
    lora_rank: int = 8
    """LoRA rank."""
    lora_alpha: float = 16.0
    """LoRA scale numerator (update = alpha / rank * B A)."""
    buffer_ratio: float = 0.25
    """Replay: share of the trained sequences drawn from earlier tasks."""
    general_ratio: float = 0.25
    """Replay: share drawn from the default corpus's training split."""
    general_blocks: int = 64
    """Replay: sequences of general data kept to draw from."""
    llrd_decay: float = 0.8
    """Layer-wise lr decay between a block and the one above it (the adapters of block l train at lr·decay^(L-l))."""

    def __post_init__(self) -> None:
        loop = self.loop
        counts = {"loop.epochs": loop.epochs, "loop.batch_size": loop.batch_size, "loop.seq_len": loop.seq_len}
        counts |= {"lora_rank": self.lora_rank, "general_blocks": self.general_blocks}
        for key, value in counts.items():
            if value < 1:
                raise ValueError(f"settings.{key}={value} must be >= 1")
        for key, value in {"loop.lr": loop.lr, "lora_lr": self.lora_lr}.items():
            if value <= 0:
                raise ValueError(f"settings.{key}={value} must be > 0")

    def stage_loop(self, lr: float, seed: int) -> TaskLoop:
        """The shared loop at ``lr``, texts ordered by ``seed``."""
        return dataclasses.replace(self.loop, lr=lr, seed=seed)


def study_piece(study_policy: str | None) -> GapStudy:
    """Stage (e)'s study pieces: gap-focused self-study (piece 4), its items written by the learned study strategy
    (piece 5: ``GapStudy(notes=...)``, a ``StudyPolicy`` JSON such as ``docs/five-pieces/study_policy/policy.json``)
    when ``study_policy`` is given, else as their source statements."""
    return GapStudy() if study_policy is None else GapStudy(notes=study_policy)


def describe(stage: str, study: bool = True, study_policy: str | None = None) -> str:
    """The pieces of ``stage`` as run: (e) says when it had no study items or no learned study strategy."""
    if stage != "e":
        return PIECES[stage]
    if not study:
        return PIECES["e"] + " (no study items: = (d))"
    return PIECES["e"] if study_policy else "LoRA + replay + LLRD + GapStudy (no learned study strategy given)"


def build_stage(
    stage: str, settings: LadderSettings, seed: int = 0, study: bool = True, study_policy: str | None = None
) -> FinetuneMethod:
    """The method of ``stage`` (``a``-``e``). ``study``: the suite has study items; without them (e) is (d)."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} is not a ladder stage; choose from {list(STAGES)}")
    if stage == "a":
        return FullFinetune(loop=settings.stage_loop(settings.loop.lr, seed))
    loop = settings.stage_loop(settings.lora_lr, seed)
    if stage == "b":
        return LoRA(rank=settings.lora_rank, alpha=settings.lora_alpha, loop=loop)
    parts: list[FinetuneMethod] = [
        LoRA(rank=settings.lora_rank, alpha=settings.lora_alpha),
        Replay(settings.buffer_ratio, settings.general_ratio, general_blocks=settings.general_blocks, seed=seed),
    ]
    if stage in ("d", "e"):
        parts.append(LayerwiseLRDecay(decay=settings.llrd_decay))
    if stage == "e" and study:
        parts.append(study_piece(study_policy))
    return Compose(parts, loop=loop)
