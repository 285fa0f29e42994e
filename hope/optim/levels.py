"""One optimizer for every level of a nested-learning model: per-group update periods, rules and lr schedules.

Nested Learning's Continuum Memory System (Eqs. 30-31, arXiv Eqs. 70-71) updates level l every C^(l) steps on
the sum of the gradients of those steps, with its own learning rate and its own optimizer:

    theta_{i+1} = theta_i - lr_l * f( sum_{t = i - C + 1}^{i} grad_t )   if i = 0 (mod C^(l)),  else theta_i

:class:`LevelOptimizer` is that rule in the outer (pretraining) loop, as ONE ``torch.optim.Optimizer`` (so that
Lightning and DeepSpeed, which accept one optimizer object, drive every level). Each parameter group carries:

* ``period``: C^(l) in optimizer steps. At every ``step()`` each parameter's ``.grad`` is added to a per-parameter
  sum (kept only while ``period > 1``); on steps that are multiples of the period the group's rule is applied to
  that sum and the sum is cleared. Other steps leave the parameters untouched. Ordinary parameters are a group
  with period 1 (no accumulator, the rule sees ``.grad`` itself).
* ``rule``: the inner rule f, applied to the summed gradient:
  ``"adamw"`` (torch.optim.AdamW's update: decoupled weight decay, bias correction counted in level updates),
  ``"sgd"`` (torch.optim.SGD's: heavy-ball ``momentum``, optional ``nesterov``, L2 ``weight_decay``, no
  dampening), or ``"deep_momentum"`` (DMGD, ``hope.optim.deep_momentum``; ``momentum`` is its retention).
* ``lr`` and an optional ``schedule``: None (use the group's ``lr`` as is, e.g. driven by an external
  ``LambdaLR``), a callable ``step -> factor``, or a dict ``{warmup_steps, decay_steps, min_lr_ratio}`` for linear
  warmup then cosine (``hope.optim.schedule.lr_factor``). A scheduled group's lr is ``peak_lr * factor(k)`` at its
  k-th optimizer step (0-based, as ``LambdaLR``): the schedule runs on the global step, so one warmup/cosine spec
  means the same thing for every level, and ``lr`` shows the current value (for loggers).

Resume: ``state_dict()`` holds, beside the usual per-parameter state, each group's step counter (``param_groups``)
and each parameter's partial gradient sum, so reloading mid-period and continuing is exact. Schedules are
configuration, not state: ``state_dict()`` leaves them out (lambdas cannot be pickled) and ``load_state_dict()``
keeps the ones the optimizer was constructed with.

Everything a group needs lives in its own dict (period, rule, schedule, counter), and every rule is coordinate-wise,
so DeepSpeed ZeRO-1/2 work: they replace each group's parameters by a flat fp32 partition and call ``step()`` with
one group at a time. (DeepSpeed needs ``"zero_allow_untested_optimizer": true`` for a client optimizer.)
"""

import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import torch
from torch import nn

from hope.optim.deep_momentum import deep_momentum_step
from hope.optim.schedule import lr_factor

__all__ = ["DeepMomentum", "LevelOptimizer", "level_param_groups", "RULES"]

Schedule = Callable[[int], float] | Mapping | None


def _adamw(p, grad, state, group):
    """torch.optim.AdamW's single-tensor update."""
    if "exp_avg" not in state:
        state["step"], state["exp_avg"], state["exp_avg_sq"] = 0, torch.zeros_like(p), torch.zeros_like(p)
    state["step"] += 1
    (beta1, beta2), lr, t = group["betas"], group["lr"], state["step"]
    p.mul_(1 - lr * group["weight_decay"])
    state["exp_avg"].lerp_(grad, 1 - beta1)
    state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**t)).add_(group["eps"])
    p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1**t))


def _sgd(p, grad, state, group):
    """torch.optim.SGD's update (dampening 0)."""
    if group["weight_decay"]:
        grad = grad.add(p, alpha=group["weight_decay"])
    if group["momentum"]:
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = grad.clone()
        else:
            buf.mul_(group["momentum"]).add_(grad)
        grad = grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
    p.add_(grad, alpha=-group["lr"])


def _deep_momentum(p, grad, state, group):
    hyper = (group[k] for k in ("lr", "momentum", "key_scale", "weight_decay"))
    deep_momentum_step(p, grad, state, *hyper)


RULES = {"adamw": _adamw, "sgd": _sgd, "deep_momentum": _deep_momentum}


def _as_factor(schedule: Schedule) -> Callable[[int], float] | None:
    if schedule is None or callable(schedule):
        return schedule
    return partial(
        lr_factor,
        warmup_steps=schedule["warmup_steps"],
        decay_steps=schedule["decay_steps"],
        min_ratio=schedule.get("min_lr_ratio", 0.1),
    )


class LevelOptimizer(torch.optim.Optimizer):
    """Per-level gated optimizer; see the module docstring. Keyword arguments are the defaults of every group.

    Args:
        params: parameters or groups (dicts); a group may set any keyword below, ``schedule`` included.
        lr: learning rate (the peak, if the group has a schedule).
        period: update period C in optimizer steps; gradients are summed over it.
        rule: "adamw", "sgd" or "deep_momentum".
        schedule: None, a callable step -> lr factor, or {warmup_steps, decay_steps, min_lr_ratio}.
        betas, eps: AdamW's.
        weight_decay: decoupled for adamw and deep_momentum, L2 (added to the gradient) for sgd, as in torch.
        momentum: SGD's momentum, or DMGD's retention alpha.
        nesterov: SGD's Nesterov momentum.
        key_scale: DMGD's initial key weight w.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        period: int = 1,
        rule: str = "adamw",
        schedule: Schedule = None,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        nesterov: bool = False,
        key_scale: float = 1.0,
    ):
        defaults = dict(lr=lr, period=period, rule=rule, schedule=schedule, betas=betas, eps=eps)
        hyper = dict(weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, key_scale=key_scale)
        super().__init__(params, {**defaults, **hyper})

    def add_param_group(self, param_group: dict) -> None:
        """Add a group: check its rule and period, turn its schedule into a factor, start its peak lr and step count."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group["rule"] not in RULES or group["period"] < 1:
            raise ValueError(
                f"rule must be in {sorted(RULES)} and period >= 1, got {group['rule']!r}, {group['period']}"
            )
        group["schedule"] = _as_factor(group["schedule"])
        group.setdefault("peak_lr", group["lr"])
        group.setdefault("step_count", 0)

    def state_dict(self) -> dict:
        """torch's state dict without the schedules: they are configuration (and lambdas cannot be pickled)."""
        state = super().state_dict()
        for group in state["param_groups"]:
            group.pop("schedule", None)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore state and counters; every group keeps the schedule it was constructed with."""
        schedules = [group["schedule"] for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, schedule in zip(self.param_groups, schedules, strict=True):
            group["schedule"] = schedule

    @torch.no_grad()
    def step(self, closure=None):
        """Per group: count the step, set the scheduled lr, sum gradients; every ``period`` steps apply the rule."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:  # DeepSpeed's ZeRO calls step() with one group at a time
            group["step_count"] += 1
            if group["schedule"] is not None:
                group["lr"] = group["peak_lr"] * group["schedule"](group["step_count"] - 1)
            due = group["step_count"] % group["period"] == 0
            for p in group["params"]:
                grad = self._summed_grad(p, group["period"], due)
                if due and grad is not None:
                    RULES[group["rule"]](p, grad, self.state[p], group)
        return loss

    def _summed_grad(self, p: torch.Tensor, period: int, due: bool) -> torch.Tensor | None:
        """Add p.grad to p's running sum; on a due step return the sum of the period (and clear it)."""
        if period == 1:
            return p.grad
        state = self.state[p]
        if p.grad is not None:
            if "grad_sum" in state:
                state["grad_sum"].add_(p.grad)
            else:
                state["grad_sum"] = p.grad.detach().clone()
        return state.pop("grad_sum", None) if due else None


class DeepMomentum(LevelOptimizer):
    """DMGD (``hope.optim.deep_momentum``) as a standalone optimizer: every group steps every step with the
    ``deep_momentum`` rule; ``momentum`` is the retention alpha."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.9, key_scale: float = 1.0, weight_decay=0.0):
        hyper = {"momentum": momentum, "key_scale": key_scale, "weight_decay": weight_decay}
        super().__init__(params, lr=lr, period=1, rule="deep_momentum", **hyper)


def _decay_split(params: list, spec: Mapping) -> list[dict]:
    """Matrices get the spec's weight decay, vectors (norm gains, biases) none (as ``weight_decay_groups``)."""
    groups = [
        {**spec, "params": [p for p in params if p.ndim >= 2]},
        {**spec, "params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def level_param_groups(model: nn.Module, base: Mapping, levels: Sequence[Mapping]) -> list[dict]:
    """Groups for :class:`LevelOptimizer`: level l gathers the l-th level of every module that has a
    ``level_parameters()`` method (e.g. ``hope.layers.cms.ContinuumMemory``) under ``levels[l]`` (period, rule,
    lr, ...); every other trainable parameter goes under ``base``. Each is split into decayed matrices and
    undecayed vectors."""
    per_level: list[list] = [[] for _ in levels]
    for module in model.modules():
        if callable(getattr(module, "level_parameters", None)):
            module_levels = module.level_parameters()
            if len(module_levels) != len(levels):
                raise ValueError(f"{type(module).__name__} has {len(module_levels)} levels, got {len(levels)} specs")
            for params, found in zip(per_level, module_levels, strict=True):
                params.extend(found)
    in_levels = {id(p) for params in per_level for p in params}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in in_levels]
    return [
        g for spec, params in [(base, rest), *zip(levels, per_level, strict=True)] for g in _decay_split(params, spec)
    ]
