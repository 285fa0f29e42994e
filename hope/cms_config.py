"""HOPE's Continuum Memory System levels in the model config: one ``CMSLevel`` per level, and the reading of
configs written before ``cms_levels`` existed (five flat per-level lists, two of them periods in different units).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any

CMS_RULES = ("adamw", "sgd", "deep_momentum")


@dataclass
class CMSLevel:
    """One level of HOPE's Continuum Memory System (NL Eqs. 30-31): its width and how often it learns, in context
    and in the outer loop. The two periods are in different units on purpose: tokens of the stream when the model
    learns at test time, optimizer steps when it is trained."""

    hidden: int | None = None
    """SwiGLU hidden width of the level; None means the model's intermediate_size."""
    tokens_per_update: int = 16
    """In context (test-time learning, ``hope.ttl``): the level takes one gradient step every this many TOKENS of
    the stream, on the gradients summed over them (NL Eq. 31's C^(l))."""
    steps_per_update: int = 1
    """Outer loop (``hope fit``, ``hope finetune``): the level's parameters step every this many OPTIMIZER steps,
    on the gradients summed over them (NL Eq. 31 in pretraining; ``hope.optim.LevelOptimizer``)."""
    rule: str = "adamw"
    """Outer-loop optimizer rule of the level: ``adamw``, ``sgd`` or ``deep_momentum`` (NL Eq. 23)."""
    lr_scale: float = 1.0
    """Outer-loop learning rate of the level as a multiple of model.optim.lr (same warmup/cosine)."""

    def validate(self, where: str) -> None:
        """Raise ValueError naming ``where`` (e.g. ``model.cms_levels[1]``), the field, its value and the fix."""
        if self.hidden is not None and self.hidden < 1:
            raise ValueError(f"{where}.hidden={self.hidden} must be >= 1, or null for model.intermediate_size.")
        for name in ("tokens_per_update", "steps_per_update"):
            if getattr(self, name) < 1:
                raise ValueError(f"{where}.{name}={getattr(self, name)} must be >= 1.")
        if self.rule not in CMS_RULES:
            raise ValueError(f"{where}.rule={self.rule!r} is unknown; choose one of {CMS_RULES}.")
        if self.lr_scale < 0:
            raise ValueError(f"{where}.lr_scale={self.lr_scale} must be >= 0 (0 freezes the level in the outer loop).")

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str) -> CMSLevel:
        """A level from a YAML / JSON mapping; an unknown key is an error that suggests the right one."""
        known = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"{where} has an unknown key {key!r}.{hint} A level's keys are {known}.")
        return cls(**values)


# The flat per-level lists that cms_levels replaced: old field -> CMSLevel field, and the old defaults.
LEGACY_CMS_FIELDS = {
    "cms_hidden": ("hidden", None),
    "cms_periods": ("tokens_per_update", [16, 256, 4096]),
    "cms_level_periods": ("steps_per_update", [1, 4, 16]),
    "cms_level_rules": ("rule", ["adamw"] * 3),
    "cms_level_lr_scale": ("lr_scale", [1.0] * 3),
}


def legacy_cms_levels(values: dict[str, Any]) -> list[dict[str, Any]]:
    """``cms_levels`` equivalent to the flat lists of a config written before it existed: one level per entry of
    the lists given, and the old defaults where a list is missing (its last entry repeated if it is too short)."""
    given = {old: values[old] for old in LEGACY_CMS_FIELDS if values.get(old) is not None}
    n_levels = max((len(v) for v in given.values()), default=3)

    def entry(old: str, i: int) -> Any:
        values_l = given.get(old, LEGACY_CMS_FIELDS[old][1])
        return None if values_l is None else values_l[min(i, len(values_l) - 1)]

    return [{new: entry(old, i) for old, (new, _) in LEGACY_CMS_FIELDS.items()} for i in range(n_levels)]
