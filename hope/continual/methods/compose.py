"""``Compose``: continual-learning pieces combined into one method, e.g. LoRA + replay + layer-wise lr decay.

    hope eval retention --checkpoint CKPT --method Compose --method.parts '[LoRA, Replay, LayerwiseLRDecay]'
    hope finetune --config configs/finetune/lora-replay-llrd.yaml

Design: every ``FinetuneMethod`` is a set of hooks around one ordinary training step (``hope.continual.finetune``),
and each method overrides only the hooks of its own idea: LoRA ``prepare``/``trains``, layer-wise decay
``lr_scales``, replay ``mix_batch``, EWC ``penalty``, gradual unfreezing ``before_optimizer_step``. So the pieces
*are* the existing methods, and ``Compose`` is one more ``FinetuneMethod`` whose hooks call its parts' hooks; a
single method is the composition of one part, and no piece is implemented twice. How each hook combines:

=========================  ===================================================================================
``prepare``                every part, in the given order (LoRA's adapters exist before the next part looks)
``trains``                 a parameter trains if every part trains it (the parts that select intersect)
``lr_scales``              the one part that scales lrs (LLRD), over whatever trains: LoRA's adapters of block
                           l get the decayed lr of depth l + 1
``make_optimizer``         the one part that brings an optimizer (SMF's SGD), else AdamW / HOPE's level optimizer
``mix_batch``              the one part that mixes batches (replay): its rows join the same loop's batches
``epoch_blocks``           the one part that chooses what a harness epoch studies (gap-focused self-study)
``penalty``                the sum of the parts' penalties (EWC's, over the parameters that train), added to the loss
``end_task``               parts that change the model (LoRA's merge-and-restart) first, then the others in order,
                           so EWC's Fisher and anchor and replay's buffer see the model the next task starts from
the rest                   every part, in order (``setup_data``, ``check_finetune``, ``before_optimizer_step``,
                           ``step_stats``, ``task_stats``, ``structure``, ``state_dict``)
=========================  ===================================================================================

The composition runs one task loop, its own ``loop`` (``--method.loop.lr``); in ``hope finetune`` the Trainer's.
Conflicts are errors that name the parts and the fix: a part that is not a finetuning method or adds no hook
(``FullFinetune``), two parts of one class, two parts for a hook only one can fill (two replays, two lr scalings,
two optimizers), a part with its own ``loop``, and parts that select parameters with no parameter in common (LoRA
trains adapters only, so LoRA with SparseMemoryFinetune, which trains the memory values, trains nothing).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from hope.continual.finetune import FinetuneMethod, TaskLoop, overrides
from hope.continual.method import Task
from hope.tokenizer import Tokenizer

HOOKS = ("prepare", "trains", "lr_scales", "make_optimizer", "setup_data", "mix_batch", "penalty")
HOOKS += ("epoch_blocks", "before_optimizer_step", "end_task")
EXCLUSIVE = {
    "lr_scales": "scale learning rates",
    "make_optimizer": "bring an optimizer",
    "mix_batch": "mix batches",
    "epoch_blocks": "choose what to study",
}


def _label(part: FinetuneMethod) -> str:
    return type(part).__name__


def check_parts(parts: list[FinetuneMethod]) -> None:
    """Raise, naming the parts and the fix, if ``parts`` cannot combine (see the module docstring)."""
    if not parts:
        raise ValueError("Compose needs parts, e.g. --method.parts '[LoRA, Replay]'; no parts is FullFinetune.")
    for part in parts:
        if not isinstance(part, FinetuneMethod) or isinstance(part, Compose):
            raise ValueError(
                f"Compose part {_label(part)} is not a finetuning piece: parts are hope.continual.methods classes "
                "that train through the step hooks (LoRA, EWC, Replay, LayerwiseLRDecay, ...), listed flat."
            )
        if not any(overrides(part, hook) for hook in HOOKS):
            raise ValueError(
                f"Compose part {_label(part)} adds nothing: a composition already trains every parameter that no "
                "part excludes, with AdamW. Drop it from method.parts."
            )
        if part.loop != TaskLoop():
            raise ValueError(
                f"Compose part {_label(part)} sets its own loop {part.loop}; the composition runs one loop: set "
                "it on Compose (--method.loop.lr ...) and leave the parts' loop unset."
            )
    names = [_label(p) for p in parts]
    for name in sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"Compose lists {name} twice; give one {name} with the settings you want.")
    for hook, what in EXCLUSIVE.items():
        filling = [_label(p) for p in parts if overrides(p, hook)]
        if len(filling) > 1:
            raise ValueError(
                f"Compose parts {' and '.join(filling)} both {what} ({hook}); only one part may. Keep one of them."
            )


class Compose(FinetuneMethod):
    """Several ``FinetuneMethod`` pieces as one method: each hook calls the parts' hooks (module docstring).

    Args:
        parts: the pieces, e.g. ``[LoRA, Replay, LayerwiseLRDecay]`` (each with its own settings, not its loop).
        loop: how ``learn`` trains on a task of the retention harness (one loop for all parts).
    """

    name = "compose"

    def __init__(self, parts: list[FinetuneMethod], loop: TaskLoop | None = None) -> None:
        check_parts(parts)
        self.parts = list(parts)
        super().__init__(loop)
        self.name = "+".join(p.name for p in self.parts)

    @property
    def _tasks_learned(self) -> int:
        return self._count

    @_tasks_learned.setter
    def _tasks_learned(self, value: int) -> None:
        # the parts seed their draws by task (replay's rows): they count the tasks with the composition
        self._count = value
        for part in self.parts:
            part._tasks_learned = value

    def _with(self, hook: str) -> list[FinetuneMethod]:
        return [p for p in self.parts if overrides(p, hook)]

    # -- model structure and trainability ------------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> None:
        """Every part's ``prepare`` in order; then raise if the parts that select parameters share none."""
        for part in self.parts:
            part.prepare(model)
        selecting = self._with("trains")
        names = [n for n, _ in model.named_parameters()]
        if len(selecting) > 1 and not any(self.trains(n) for n in names):
            each = "; ".join(f"{_label(p)} trains {[n for n in names if p.trains(n)][:2]}..." for p in selecting)
            raise ValueError(
                f"Compose parts {' and '.join(_label(p) for p in selecting)} select parameters with none in common "
                f"({each}), so nothing would train. Keep one of them, or narrow one onto the other's (e.g. LoRA "
                "targets inside the CMS levels: targets [blocks.*.cms.levels.0.*])."
            )

    def trains(self, name: str) -> bool:
        """Whether every part trains ``name``."""
        return all(part.trains(name) for part in self.parts)

    def lr_scales(self, model: nn.Module) -> dict[str, float]:
        """The lr multipliers of the part that scales learning rates (at most one), else none."""
        return next((p.lr_scales(model) for p in self._with("lr_scales")), {})

    def make_optimizer(
        self, groups: list[dict], betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8
    ) -> torch.optim.Optimizer:
        """The optimizer of the part that brings one (at most one), else AdamW."""
        owner = next(iter(self._with("make_optimizer")), None)
        return super().make_optimizer(groups, betas, eps) if owner is None else owner.make_optimizer(groups, betas, eps)

    def brings_optimizer(self) -> bool:
        """Whether a part replaces AdamW."""
        return any(p.brings_optimizer() for p in self.parts)

    def structure(self) -> dict:
        """The parts' structures merged (LoRA's modules), for ``load_finetuned``."""
        return {k: v for part in self.parts for k, v in part.structure().items()}

    # -- data-dependent state, every step, after a task ------------------------------------------------------------
    def setup_data(self, model: nn.Module, tokenizer: Tokenizer, seq_len: int) -> None:
        """Every part's missing data state (EWC's Fisher, replay's pools, SMF's background)."""
        for part in self.parts:
            part.setup_data(model, tokenizer, seq_len)

    def check_finetune(self) -> None:
        """Every part's ``hope finetune`` check."""
        for part in self.parts:
            part.check_finetune()

    def mix_batch(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """The batch of the part that mixes batches (replay; at most one), else ``batch``."""
        return next((p.mix_batch(batch, step) for p in self._with("mix_batch")), batch)

    def epoch_blocks(
        self, model: nn.Module, task: Task, tokenizer: Tokenizer, seq_len: int, epoch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The blocks of the part that chooses what to study (at most one), else the task's shuffled texts."""
        owner = next(iter(self._with("epoch_blocks")), None)
        study = super().epoch_blocks if owner is None else owner.epoch_blocks
        return study(model, task, tokenizer, seq_len, epoch)

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """The sum of the parts' penalties, or None if none has one."""
        terms = [t for t in (p.penalty(model) for p in self.parts) if t is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def before_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Every part's gradient hook, in order."""
        for part in self.parts:
            part.before_optimizer_step(model, step)

    def end_task(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        """Parts that change the model first (LoRA's merge-and-restart), then the others, each in order."""
        changing = self._with("prepare")
        for part in changing + [p for p in self.parts if p not in changing]:
            part.end_task(model, inputs, labels)

    def step_stats(self) -> dict[str, float]:
        """The parts' step statistics merged."""
        return {k: v for part in self.parts for k, v in part.step_stats().items()}

    def task_stats(self) -> dict[str, float]:
        """The parts' task statistics merged."""
        return {k: v for part in self.parts for k, v in part.task_stats().items()}

    # -- checkpoint state and report -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The base state plus every part's, in order."""
        return {**super().state_dict(), "parts": [p.state_dict() for p in self.parts]}

    def load_state_dict(self, state: dict) -> None:
        """Restore every part's state and the shared task count."""
        for part, part_state in zip(self.parts, state.get("parts", [{}] * len(self.parts)), strict=True):
            part.load_state_dict(part_state)
        super().load_state_dict(state)

    def config(self) -> dict:
        """The parts as ``class_path`` + ``init_args`` (without their unused loops) and the one loop."""
        parts = [
            {
                "class_path": f"{type(p).__module__}.{type(p).__qualname__}",
                "init_args": {k: v for k, v in p.config().items() if k != "loop"},
            }
            for p in self.parts
        ]
        return {"parts": parts, "loop": dataclasses.asdict(self.loop)}
