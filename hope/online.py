"""Models that learn while they read, behind the model's own call ``logits, state = reader(idx_BT, state)``.

Every evaluation (perplexity, recall, the retention tests, lm-eval) reads a model through that one call, so a reader
that learns inside it plugs into all of them: HOPE's test-time learning of the CMS levels (``hope.ttl``) or dynamic
evaluation of any family (``hope.dynamic``)::

    reader = online_model(model, ttl=TTLConfig(inner_lr=1e-3))      # hope / hope-attention
    reader = online_model(model, dynamic=DynamicConfig(lr=1e-4))    # every family
    logits, state = reader(idx_BT, state)     # every token scored before anything learns from it
    state = reader.consolidate(state)         # write what was learned into the model's weights

Rules both readers keep:

* No look-ahead: a token's logits come from what was learned from the tokens before it, never from itself or later
  ones (``tests/test_online.py`` compares both with loops written out and perturbs later tokens).
* What is learned lives in the returned state until ``consolidate``, so a caller can branch from a state, re-read,
  keep it for the next document or drop it; the model's weights change only in ``consolidate``.
* Families whose blocks carry no recurrent state (Transformer++, Hope-Attention) read each call as a window: only
  what was learned passes to the next call, not the attention context (a Hope-Attention KV cache would outgrow
  ``max_seq_len`` on a long stream), exactly as the model itself is read window by window.
* A call's last token teaches nothing: its target is the next call's first token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from hope.config import HOPE_FAMILIES
from hope.dynamic import DynamicConfig, DynamicEvaluator
from hope.layers.cms import ContinuumMemory
from hope.model import HopeLM
from hope.ttl import TestTimeLearner

__all__ = ["OnlineLM", "TTLConfig", "learning", "learning_from_args", "learning_settings", "online_model"]


@dataclass
class TTLConfig:
    """Test-time learning of HOPE's CMS levels in an evaluation (``hope.ttl.TestTimeLearner``)."""

    inner_lr: float | None = None
    """in-context step size of every level; None: the model's ``cms_inner_lr``"""
    objective: Literal["teach", "reconstruction"] | None = None
    """``teach`` (next-token loss through the head) or ``reconstruction`` (layer-local); None: the model's"""
    max_step: float | None = None
    """cap of each in-context step, as a fraction of the stored weights' norm (``cms_max_step``); None: the model's"""
    consolidate: bool = False
    """write the fast weights into the model at each document's end (perplexity, rolling) or task's end
    (retention), instead of keeping them in the state or dropping them with it"""
    max_change: float | None = None
    """cap of one consolidation: per CMS level, ||change||_F <= max_change * ||(gate, up, down)||_F (a larger
    change is scaled down, its direction kept); None: no cap"""

    def __post_init__(self) -> None:
        if self.max_change is not None and self.max_change <= 0:
            raise ValueError(f"ttl.max_change={self.max_change} must be > 0 (or None: no cap)")


class OnlineLM(nn.Module):
    """A model read through a learner: its call is ``learner.step`` (see the module docstring).

    Args:
        model: the HopeLM whose weights (dynamic evaluation) or CMS levels (test-time learning) learn.
        learner: a ``TestTimeLearner`` or a ``DynamicEvaluator`` of ``model``.
    """

    carries_state = True  # what was learned carries from call to call, whatever the family

    def __init__(self, model: HopeLM, learner: TestTimeLearner | DynamicEvaluator) -> None:
        super().__init__()
        self.model, self.learner, self.config = model, learner, model.config

    def forward(self, idx_BT: torch.Tensor, state=None) -> tuple[torch.Tensor, object]:
        """Logits of ``idx_BT``, each token's before anything learns from it, and the advanced state."""
        if state is not None and not self.model.carries_state:
            state = self.learner.fresh_context(state)
        return self.learner.step(idx_BT, state)

    def consolidate(self, state, max_change: float | None = None):
        """Write what ``state`` learned into the weights (capped by ``max_change``); the state with none left."""
        return self.learner.consolidate(state, max_change)

    def fresh_context(self, state):
        """What ``state`` learned, without the model's context."""
        return self.learner.fresh_context(state)


def online_model(
    model: HopeLM, ttl: TTLConfig | None = None, dynamic: DynamicConfig | None = None
) -> HopeLM | OnlineLM:
    """``model`` read with test-time learning (``ttl``) or dynamic evaluation (``dynamic``); ``model`` itself if
    neither. Test-time learning sets the model's CMS step size, objective and step cap when given (``learning`` restores
    them)."""
    if ttl is not None and dynamic is not None:
        raise ValueError("choose one of ttl (test-time learning) and dynamic (dynamic evaluation), not both")
    if dynamic is not None:
        return OnlineLM(model, DynamicEvaluator(model, dynamic))
    if ttl is None:
        return model
    family = model.config.family
    if family not in HOPE_FAMILIES:
        raise ValueError(
            f"ttl: model.family={family!r} has no CMS levels to learn in context (test-time learning is HOPE's: "
            f"families {', '.join(HOPE_FAMILIES)}). For a {family} model use dynamic evaluation instead "
            "(--dynamic, DynamicConfig; dynamic=true in lm-eval's --model_args)."
        )
    return OnlineLM(model, TestTimeLearner(model, ttl.inner_lr, ttl.objective, ttl.max_step))


@contextmanager
def learning(
    model: HopeLM, ttl: TTLConfig | None = None, dynamic: DynamicConfig | None = None
) -> Iterator[HopeLM | OnlineLM]:
    """``online_model(model, ttl, dynamic)`` within the context; after it the model's weights and CMS settings are
    as they were, whatever was consolidated (an evaluation leaves its model unchanged). No copy without learning."""
    if ttl is None and dynamic is None:
        yield model
        return
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    settings = [
        (m, list(m.inner_lr), m.objective, m.max_step) for m in model.modules() if isinstance(m, ContinuumMemory)
    ]
    try:
        yield online_model(model, ttl, dynamic)
    finally:
        model.load_state_dict(weights)
        for m, inner_lr, objective, max_step in settings:
            m.inner_lr, m.objective, m.max_step = inner_lr, objective, max_step


def learning_settings(ttl: TTLConfig | None, dynamic: DynamicConfig | None) -> dict:
    """``{"ttl": ..., "dynamic": ...}`` as plain dicts (None when off), for the JSON reports."""
    return {k: None if v is None else dataclasses.asdict(v) for k, v in (("ttl", ttl), ("dynamic", dynamic))}


def learning_from_args(args: Mapping[str, object]) -> tuple[TTLConfig | None, DynamicConfig | None]:
    """The two configs from flat ``key=value`` arguments (lm-eval's ``--model_args``): ``ttl=true`` or any
    ``ttl_<field>`` (``ttl_inner_lr=1e-3``) turns test-time learning on, ``dynamic=true`` or ``dynamic_<field>``
    dynamic evaluation; ``ttl=false`` / ``dynamic=false`` leave them off."""
    configs = []
    for prefix, cls in (("ttl", TTLConfig), ("dynamic", DynamicConfig)):
        fields = {f.name for f in dataclasses.fields(cls)}
        given = {k.removeprefix(prefix + "_"): v for k, v in args.items() if k.startswith(prefix + "_")}
        unknown = sorted(set(given) - fields)
        if unknown:
            raise ValueError(
                f"unknown {prefix} option(s) {[f'{prefix}_{k}' for k in unknown]}; choose from "
                f"{sorted(f'{prefix}_{f}' for f in fields)}"
            )
        on = args.get(prefix, bool(given))
        if isinstance(on, str):
            on = on.lower() in ("1", "true", "yes")
        configs.append(cls(**given) if on else None)
    return configs[0], configs[1]
