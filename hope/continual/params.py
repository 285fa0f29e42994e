"""Which parameters a finetuning run trains, and at which learning rate: name patterns, depths and param groups.

Patterns match full parameter names (``model.named_parameters()`` of a ``HopeLM``, e.g. ``blocks.3.attn.qkv.weight``):

- a glob (``fnmatch``: ``*`` also crosses dots): ``blocks.*.attn.*``, ``embed.*``, ``head.weight``;
- a regular expression after ``re:``, matched against the whole name: ``re:blocks\\.[0-3]\\..*``.

CMS levels of the HOPE family are parameters named ``blocks.N.cms.levels.L.*``, so ``blocks.*.cms.levels.0.*``
freezes (or trains) level 0 of every block. A pattern that matches nothing is an error: a typo must not silently
freeze nothing.

Depth orders parameters from the input to the output (layer-wise lr decay, gradual unfreezing): the embedding is
depth 0, ``blocks.i.*`` depth ``i + 1``, everything after the blocks (final norm, head) depth ``n_layer + 1``.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping

from torch import nn


def matches(name: str, pattern: str) -> bool:
    """Whether ``name`` matches one pattern (a glob, or a regex after ``re:``)."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """Whether ``name`` matches at least one of ``patterns`` (globs, or regexes after ``re:``)."""
    return any(matches(name, p) for p in patterns)


def check_patterns(names: list[str], patterns: Iterable[str], key: str) -> None:
    """Raise if a pattern matches none of ``names``, naming the config ``key`` and the closest names."""
    for pattern in patterns:
        if not any(matches(n, pattern) for n in names):
            close = difflib.get_close_matches(pattern.removeprefix("re:"), names, n=3, cutoff=0.3)
            raise ValueError(
                f"{key}: pattern {pattern!r} matches no parameter of this model. Names look like {close or names[:3]}"
                " (globs: `*` crosses dots; regex: prefix `re:`)."
            )


def depth(name: str, n_layer: int) -> int:
    """0 for the embedding, i + 1 for ``blocks.i.*``, n_layer + 1 for what follows the blocks."""
    if name.startswith("embed."):
        return 0
    match = re.match(r"blocks\.(\d+)\.", name)
    return int(match.group(1)) + 1 if match else n_layer + 1


def configure_trainable(
    model: nn.Module,
    method_trains: Callable[[str], bool] = lambda name: True,
    freeze: list[str] | None = None,
    train_only: list[str] | None = None,
) -> list[str]:
    """Set ``requires_grad``: a parameter trains if the method trains it, ``train_only`` (if given) matches it
    and no ``freeze`` pattern does. Returns the trainable names; raises if there are none."""
    names = [n for n, _ in model.named_parameters()]
    check_patterns(names, freeze or [], "freeze")
    check_patterns(names, train_only or [], "train_only")
    trainable = []
    for name, p in model.named_parameters():
        on = method_trains(name) and not matches_any(name, freeze or [])
        on = on and (train_only is None or matches_any(name, train_only))
        p.requires_grad_(on)
        if on:
            trainable.append(name)
    if not trainable:
        raise ValueError("no parameter is left to train: the method, freeze and train_only exclude every one.")
    return trainable


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    scales: Mapping[str, float] | None = None,
    group_lr: Mapping[str, float] | None = None,
) -> list[dict]:
    """Optimizer groups of the trainable parameters, one per distinct (lr, weight decay).

    A parameter's peak lr is the value of the first ``group_lr`` pattern that matches it (else ``lr``), times its
    ``scales`` entry (layer-wise decay; default 1). Matrices get ``weight_decay``, vectors (norms, biases) 0, as in
    pretraining. Each group also lists its parameter ``names`` (kept in the optimizer state, handy in tests).
    """
    check_patterns([n for n, _ in model.named_parameters()], list(group_lr or {}), "group_lr")
    groups: dict[tuple[float, float], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        peak = next((v for pat, v in (group_lr or {}).items() if matches(name, pat)), lr)
        peak *= (scales or {}).get(name, 1.0)
        decay = weight_decay if p.ndim >= 2 else 0.0
        group = groups.setdefault((peak, decay), {"params": [], "names": [], "lr": peak, "weight_decay": decay})
        group["params"].append(p)
        group["names"].append(name)
    return list(groups.values())
