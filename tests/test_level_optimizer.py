"""LevelOptimizer: step gating, gradient sums, each rule against a reference, schedules, exact mid-period resume."""

import io
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from hope.layers.cms import ContinuumMemory
from hope.optim import DeepMomentum, LevelOptimizer, level_param_groups, lr_factor

F64 = torch.float64


def params(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(*s, dtype=F64, generator=g)) for s in shapes]


def grads(n_steps, shapes, seed=1):
    """A fixed random gradient for every step and parameter."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(*s, dtype=F64, generator=g) for s in shapes] for _ in range(n_steps)]


def run(opt, ps, gs):
    """Step ``opt`` with the given gradients; returns the parameters after every step."""
    history = []
    for step_grads in gs:
        for p, g in zip(ps, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()
        opt.zero_grad()
        history.append([p.detach().clone() for p in ps])
    return history


def test_a_level_steps_only_every_period_on_the_summed_gradient():
    fast, slow = params((3, 2), (4,))
    start = slow.detach().clone()
    opt = LevelOptimizer([{"params": [fast]}, {"params": [slow], "period": 4}], lr=1.0, rule="sgd", momentum=0.0)
    gs = grads(9, [(3, 2), (4,)])
    history = run(opt, [fast, slow], gs)
    changed = [i + 1 for i in range(9) if not torch.equal(history[i][1], history[i - 1][1] if i else start)]
    assert changed == [4, 8]
    torch.testing.assert_close(history[3][1], start - sum(g[1] for g in gs[:4]), rtol=0, atol=1e-14)
    torch.testing.assert_close(history[7][1], history[3][1] - sum(g[1] for g in gs[4:8]), rtol=0, atol=1e-14)
    assert all(
        not torch.equal(a[0], b[0]) for a, b in zip(history[:-1], history[1:], strict=True)
    )  # period 1 steps every time
    assert "grad_sum" in opt.state[slow]  # step 9 is mid-period


@pytest.mark.parametrize(
    "rule, kw, torch_opt",
    [
        ("adamw", dict(betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1), torch.optim.AdamW),
        ("sgd", dict(momentum=0.9, weight_decay=0.01), torch.optim.SGD),
        ("sgd", dict(momentum=0.9, nesterov=True), torch.optim.SGD),
    ],
)
@pytest.mark.parametrize("period", [1, 3])
def test_torch_rules_match_torch_on_the_summed_gradients(rule, kw, torch_opt, period):
    """Period C == torch's optimizer stepped every C steps with .grad = the sum of the C gradients."""
    shapes = [(3, 4), (5,)]
    ps, ref = params(*shapes), params(*shapes)
    gs = grads(9, shapes)
    ours = run(LevelOptimizer(ps, lr=0.01, period=period, rule=rule, **kw), ps, gs)
    summed = [[sum(g[i] for g in gs[s : s + period]) for i in range(2)] for s in range(0, 9, period)]
    theirs = run(torch_opt(ref, lr=0.01, foreach=False, **kw), ref, summed)
    for n, expected in enumerate(theirs):
        for p, e in zip(ours[(n + 1) * period - 1], expected, strict=True):
            torch.testing.assert_close(p, e, rtol=1e-14, atol=1e-15)


def test_deep_momentum_matches_the_hand_written_update():
    """Eq. 23 as implemented, one coordinate at a time in Python floats, over a period of 2."""
    (p,) = params((6,))
    start = p.detach().clone()
    gs = grads(6, [(6,)])
    lr, alpha, key, wd = 0.1, 0.8, 3.0, 0.05
    history = run(
        LevelOptimizer([p], lr=lr, period=2, rule="deep_momentum", momentum=alpha, key_scale=key, weight_decay=wd),
        [p],
        gs,
    )
    for c in range(6):
        W, b, a, w = start[c].item(), 0.0, 0.0, key
        for s in range(0, 6, 2):
            u = gs[s][0][c].item() + gs[s + 1][0][c].item()
            t = math.tanh(w * u)
            b, a, w = alpha * b - lr * u, alpha * a - lr * t * u, w - lr * a * (1 - t * t) * u * u
            W = W * (1 - lr * wd) + b + a * math.tanh(w * u)
            assert history[s + 1][0][c].item() == pytest.approx(W, rel=1e-13, abs=1e-15)


def test_deep_momentum_optimizer_against_hand_computed_values():
    """DMGD (NL Eq. 23) on one scalar, lr 0.1, retention 0.5, key scale 2, worked out by hand:

    step 1, u = 0.5:   t = tanh(2 * 0.5) = 0.761594;  a = -0.1 t u = -0.038080;  b = -0.1 u = -0.05;  w = 2
                       W = 1 + b + a tanh(w u) = 1 - 0.05 - 0.038080 * 0.761594 = 0.920999
    step 2, u = -0.25: t = tanh(-0.5) = -0.462117;  dw = a (1 - t^2) u^2 = -0.038080 * 0.786448 * 0.0625 = -0.001872
                       a = 0.5 * -0.038080 - 0.1 t u = -0.030593;  b = 0.5 * -0.05 + 0.025 = 0;  w = 2 + 0.000187
                       W = 0.920999 + 0 - 0.030593 * tanh(2.000187 * -0.25) = 0.935137
    """
    p = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = DeepMomentum([p], lr=0.1, momentum=0.5, key_scale=2.0)
    expected = [  # (W, b, a, w) after each step
        (0.9209987170807012, -0.05, -0.03807970779778824, 2.0),
        (0.9351372927193913, 0.0, -0.030592782830394363, 2.0001871731241847),
    ]
    for u, (W, b, a, w) in zip((0.5, -0.25), expected, strict=True):
        p.grad = torch.tensor([u], dtype=torch.float64)
        opt.step()
        state = opt.state[p]
        got = [p.item(), state["dm_b"].item(), state["dm_a"].item(), state["dm_w"].item()]
        assert got == pytest.approx([W, b, a, w], rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(
    "schedule",
    [dict(warmup_steps=3, decay_steps=10, min_lr_ratio=0.2), lambda step: 1.0 / (step + 1)],
)
def test_per_group_schedules(schedule):
    fixed, scheduled = params((2,), (2,))
    opt = LevelOptimizer(
        [{"params": [fixed]}, {"params": [scheduled], "schedule": schedule, "period": 2}],
        lr=0.5,
        rule="sgd",
        momentum=0.0,
    )
    factor = schedule if callable(schedule) else (lambda k: lr_factor(k, 3, 10, 0.2))
    gs = grads(8, [(2,), (2,)])
    before = scheduled.detach().clone()
    history = run(opt, [fixed, scheduled], gs)
    for k in range(1, 8, 2):  # the slow group steps at k = 1, 3, 5, 7 (0-based), with the lr of that step
        expected = before - 0.5 * factor(k) * (gs[k - 1][1] + gs[k][1])
        torch.testing.assert_close(history[k][1], expected, rtol=1e-13, atol=1e-14)
        before = history[k][1]
    assert opt.param_groups[0]["lr"] == 0.5
    assert opt.param_groups[1]["lr"] == pytest.approx(0.5 * factor(7))


def _model_and_optimizer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), ContinuumMemory(8, 16, periods=(1, 2, 4)), nn.Linear(8, 3)).double()
    base = dict(rule="adamw", lr=1e-2, weight_decay=0.1)
    levels = [
        dict(rule="sgd", period=2, lr=0.1, momentum=0.9),
        dict(rule="deep_momentum", period=4, lr=0.05, momentum=0.5, key_scale=5.0),
        dict(rule="adamw", period=4, lr=1e-2, schedule=dict(warmup_steps=2, decay_steps=12)),
    ]
    return model, LevelOptimizer(level_param_groups(model, base, levels))


def _train(model, opt, steps):
    for s in steps:
        g = torch.Generator().manual_seed(s)
        x, y = torch.randn(2, 5, 4, dtype=F64, generator=g), torch.randn(2, 5, 3, dtype=F64, generator=g)
        opt.zero_grad()
        (_forward(model, x) - y).pow(2).mean().backward()
        opt.step()


def _forward(model, x):
    h = model[0](x)
    h, _ = model[1](h)
    return model[2](h)


def test_resume_mid_period_is_exact():
    """Save at step 6 (mid-period for the period-4 levels), reload into fresh objects, continue to 12."""
    model, opt = _model_and_optimizer()
    _train(model, opt, range(12))

    model_a, opt_a = _model_and_optimizer()
    _train(model_a, opt_a, range(6))
    buffer = io.BytesIO()
    torch.save({"model": model_a.state_dict(), "opt": opt_a.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    model_b, opt_b = _model_and_optimizer()
    model_b.load_state_dict(saved["model"])
    opt_b.load_state_dict(saved["opt"])
    assert any("grad_sum" in s for s in opt_b.state.values())
    _train(model_b, opt_b, range(6, 12))
    for (name, p), q in zip(model.named_parameters(), model_b.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_level_param_groups():
    model, opt = _model_and_optimizer()
    periods = [(g["period"], g["rule"], len(g["params"])) for g in opt.param_groups]
    # base: 2 matrices and 2 biases; each CMS level: 3 SwiGLU matrices and 1 norm gain
    assert periods == [
        (1, "adamw", 2), (1, "adamw", 2), (2, "sgd", 3), (2, "sgd", 1),
        (4, "deep_momentum", 3), (4, "deep_momentum", 1), (4, "adamw", 3), (4, "adamw", 1),
    ]  # fmt: skip
    assert [g["weight_decay"] for g in opt.param_groups[:2]] == [0.1, 0.0]
    with pytest.raises(ValueError):
        level_param_groups(model, {}, [{}])
    with pytest.raises(ValueError):
        LevelOptimizer(model.parameters(), rule="adam")


def test_lightning_drives_it_as_its_single_optimizer():
    """Lightning's automatic optimization (closure inside step) steps the period-4 group on steps 4 and 8 only."""
    import lightning.pytorch as L
    from torch.utils.data import DataLoader, TensorDataset

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.fast, self.slow, self.seen = nn.Linear(3, 1), nn.Linear(3, 1), []

        def training_step(self, batch, _):
            x, y = batch
            return (self.fast(x) + self.slow(x) - y).pow(2).mean()

        def on_train_batch_end(self, *_):
            self.seen.append(self.slow.weight.detach().clone())

        def configure_optimizers(self):
            groups = [{"params": self.fast.parameters()}, {"params": self.slow.parameters(), "period": 4}]
            return LevelOptimizer(groups, lr=0.1, rule="sgd", momentum=0.0)

    torch.manual_seed(0)
    model = Tiny()
    start = model.slow.weight.detach().clone()
    data = DataLoader(TensorDataset(torch.randn(16, 3), torch.randn(16, 1)), batch_size=2)
    trainer = L.Trainer(
        max_steps=8, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, data)
    seen = [start, *model.seen]
    assert [i for i in range(1, 9) if not torch.equal(seen[i], seen[i - 1])] == [4, 8]
    assert trainer.optimizers[0].param_groups[1]["step_count"] == 8


DEEPSPEED_SCRIPT = """
import os, torch, deepspeed
from torch import nn
from hope.optim import LevelOptimizer

def build():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 2))
    groups = [{"params": m[0].parameters(), "rule": "adamw", "lr": 1e-2},
              {"params": m[2].parameters(), "rule": "deep_momentum", "period": 3, "lr": 0.05, "key_scale": 5.0}]
    return m, LevelOptimizer(groups)

def loss(model, s):
    g = torch.Generator().manual_seed(s)
    return (model(torch.randn(2, 4, generator=g)) - torch.randn(2, 2, generator=g)).pow(2).mean()

ref, opt = build()
for s in range(7):
    opt.zero_grad(); loss(ref, s).backward(); opt.step()
model, opt = build()
cfg = {"train_batch_size": 2, "zero_optimization": {"stage": 2}, "gradient_clipping": 0.0,
       "zero_allow_untested_optimizer": True}
engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
for s in range(7):
    engine.backward(loss(engine, s)); engine.step()
assert all(torch.equal(p, q) for p, q in zip(ref.parameters(), model.parameters()))
print("OK")
"""


@pytest.mark.slow
def test_deepspeed_zero2_steps_flat_partitions_one_group_at_a_time():
    """ZeRO-2 (flat fp32 partitions, step() called per group) gives the same parameters as the plain optimizer."""
    pytest.importorskip("deepspeed")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29561"}
    env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(repo / ".cache" / "torch_extensions"))
    out = subprocess.run([sys.executable, "-c", DEEPSPEED_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "OK" in out.stdout, (out.stdout + out.stderr)[-3000:]
