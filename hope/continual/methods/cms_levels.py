"""HOPE-native finetuning: train only chosen levels of the Continuum Memory System (Nested Learning §3, Eq. 31).

A CMS is a chain of MLP levels with different update frequencies (``hope.layers.cms``); the slow levels hold
long-lived knowledge and the fast ones adapt. Finetuning only some levels (e.g. the fast ones) keeps the rest of the
model exactly as pretrained. In the HOPE families (``hope-debug``, ``hope-attention-*``) the levels' parameters are
named ``blocks.{block}.cms.levels.{level}.*`` (``pattern`` says otherwise if a model names them differently), so
this method is a name-pattern filter: the same as ``train_only: [blocks.*.cms.levels.2.*]`` on the run, packaged
as a method the retention harness can run. ``levels`` defaults to every level.

It trains the levels' stored weights (the outer loop) with the level optimizer of ``hope fit``
(``FinetuneMethod.build_optimizer``): level l steps once every ``cms_levels[l].steps_per_update`` optimizer steps,
on the gradients summed over them. In the retention harness every task gets a fresh optimizer and
``loop.epochs`` passes of batches (``TaskLoop``; ``learn`` reports the ``steps``), and the partial sums are dropped
at the task's end, so a level takes ``steps // steps_per_update`` updates per task: a slow level (16 steps per update
in the presets) moves only on tasks of at least that many steps. Choose the levels, ``loop.epochs`` and
``loop.lr`` with that in mind. The in-context updates a HOPE model makes while it reads are part of its state and run
as the model defines them (``TestTimeLearning`` learns a task that way). On a model without CMS levels the method
stops with an error that says so.
"""

from __future__ import annotations

from torch import nn

from hope.continual.finetune import FinetuneMethod, TaskLoop
from hope.continual.params import matches_any


class CMSLevels(FinetuneMethod):
    """Train only the chosen CMS levels (of the chosen blocks), plus any ``also`` patterns; freeze the rest.

    Args:
        levels: CMS level indices to train (0 = the first, fastest level of the chain); None: every level.
        blocks: block indices whose levels train (None: every block).
        also: further parameter-name patterns that train too (e.g. ``[head.weight]``).
        pattern: how a level's parameters are named; ``{block}`` and ``{level}`` are filled in.
        loop: how ``learn`` trains on a task of the retention harness.
    """

    name = "cms_levels"

    def __init__(
        self,
        levels: list[int] | None = None,
        blocks: list[int] | None = None,
        also: list[str] | None = None,
        pattern: str = "blocks.{block}.cms.levels.{level}.*",
        loop: TaskLoop | None = None,
    ) -> None:
        super().__init__(loop)
        if levels is not None and not levels:
            raise ValueError("CMSLevels: levels=[] trains no level; give level indices, or None for every level.")
        self.levels, self.blocks, self.also, self.pattern = levels, blocks, also or [], pattern
        block_keys = ["*"] if blocks is None else [str(b) for b in blocks]
        level_keys = ["*"] if levels is None else levels
        self._patterns = [pattern.format(block=b, level=lvl) for b in block_keys for lvl in level_keys] + self.also

    def prepare(self, model: nn.Module) -> None:
        """Raise if no parameter is named like a chosen CMS level (a model without CMS levels); no structural change."""
        names = [n for n, _ in model.named_parameters()]
        if not any(matches_any(n, self._patterns[: len(self._patterns) - len(self.also)]) for n in names):
            family = getattr(getattr(model, "config", None), "family", "?")
            raise ValueError(
                f"CMSLevels: no parameter matches {self._patterns}; this model (family {family!r}) has "
                "no CMS levels under that name. Use a HOPE-family model, or set `pattern`."
            )

    def trains(self, name: str) -> bool:
        """Whether ``name`` is a parameter of a chosen level (of a chosen block) or matches an ``also`` pattern."""
        return matches_any(name, self._patterns)
