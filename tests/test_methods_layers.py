"""Layer-wise lr decay, gradual unfreezing and CMS-level finetuning: what trains, and at which lr."""

import pytest

from hope.continual.methods import CMSLevels, GradualUnfreezing, LayerwiseLRDecay
from hope.continual.params import configure_trainable, param_groups
from hope.optim import OptimConfig
from hope.optim.levels import LevelOptimizer
from tests.test_finetune_params import changed, snapshot, tiny_model, train_steps


def test_llrd_gives_the_documented_lrs():
    model = tiny_model(n_layer=4)
    groups = param_groups(model, 1.0, 0.0, LayerwiseLRDecay(decay=0.5).lr_scales(model))
    lr_of = {name: g["lr"] for g in groups for name in g["names"]}
    # module docstring: head/norm lr, block 3 lr/2, block 2 lr/4, block 1 lr/8, block 0 lr/16, embedding lr/32
    assert lr_of["head.weight"] == lr_of["norm.weight"] == 1.0
    assert [lr_of[f"blocks.{i}.attn.qkv.weight"] for i in (3, 2, 1, 0)] == [0.5, 0.25, 0.125, 0.0625]
    assert lr_of["embed.weight"] == 1 / 32
    optimizer = LayerwiseLRDecay().make_optimizer(groups)
    assert sorted(g["lr"] for g in optimizer.param_groups) == sorted(g["lr"] for g in groups)


def test_llrd_multiplies_group_lr():
    model = tiny_model(n_layer=2)
    groups = param_groups(model, 1.0, 0.0, LayerwiseLRDecay(decay=0.5).lr_scales(model), group_lr={"blocks.1.*": 4.0})
    lr_of = {name: g["lr"] for g in groups for name in g["names"]}
    assert lr_of["blocks.1.mlp.up.weight"] == 2.0 and lr_of["blocks.0.mlp.up.weight"] == 0.25


def test_gradual_unfreezing_thaws_from_the_top():
    model, method = tiny_model(n_layer=2), GradualUnfreezing(unfreeze_every=2)
    assert [method.lowest_thawed(2, s) for s in range(8)] == [3, 3, 2, 2, 1, 1, 0, 0]
    before = snapshot(model)
    train_steps(method, model, steps=2)  # steps 0, 1: only depth 3 (final norm, head)
    assert changed(model, before) == {"norm.weight", "head.weight"}
    before = snapshot(model)
    method.before_optimizer_step = lambda m, step, f=method.before_optimizer_step: f(m, step + 2)  # steps 2, 3
    train_steps(method, model, steps=2)
    moved = changed(model, before)
    assert {"norm.weight", "head.weight", "blocks.1.attn.qkv.weight"} <= moved
    assert not any(n.startswith(("blocks.0.", "embed.")) for n in moved)


def tiny_hope():
    return tiny_model(
        family="hope",
        cms_levels=[{"hidden": 32, "tokens_per_update": 16 * 16**i, "steps_per_update": 4**i} for i in range(3)],
    )


def test_cms_levels_trains_only_the_chosen_levels_of_a_hope_model():
    model, method = tiny_hope(), CMSLevels(levels=[2], blocks=[1])
    method.prepare(model)
    trainable = configure_trainable(model, method.trains)
    assert sorted(trainable) == [
        f"blocks.1.cms.levels.2.{n}" for n in ("mlp.down.weight", "mlp.gate.weight", "mlp.up.weight", "norm.weight")
    ]
    before = snapshot(model)
    train_steps(method, model, steps=2)
    assert changed(model, before) == set(trainable)


def test_hope_finetuning_keeps_the_cms_level_periods():
    """In `hope finetune`, HOPE models keep NL's outer loop: level l steps every cms_levels[l].steps_per_update."""
    model = tiny_hope()
    configure_trainable(model, freeze=["embed.*"])
    method = LayerwiseLRDecay(decay=0.5)
    optimizer = method.build_optimizer(model, OptimConfig(lr=1.0), 100)["optimizer"]
    assert isinstance(optimizer, LevelOptimizer)
    period_of = {n: g["period"] for g in optimizer.param_groups for n in g["names"]}
    lr_of = {n: g["peak_lr"] for g in optimizer.param_groups for n in g["names"]}
    periods = [level.steps_per_update for level in model.config.cms_levels]
    assert [period_of[f"blocks.0.cms.levels.{lv}.mlp.up.weight"] for lv in range(3)] == periods
    assert period_of["head.weight"] == 1 and "embed.weight" not in period_of
    assert lr_of["head.weight"] == 1.0 and lr_of["blocks.1.cms.levels.0.mlp.up.weight"] == 0.5  # decay still applies


def test_cms_levels_on_a_model_without_cms_says_so():
    with pytest.raises(ValueError, match="has no CMS levels"):
        CMSLevels(levels=[0]).prepare(tiny_model())


def test_cms_levels_default_to_every_level_and_a_level_moves_only_on_tasks_as_long_as_its_period():
    """The module docstring's rule in the retention harness: level l takes steps // steps_per_update updates per
    task (periods 1, 4, 16 here), and a task's partial sums are dropped at its end."""
    from hope.continual.method import Task
    from hope.continual.methods import TaskLoop
    from hope.tokenizer import Tokenizer

    model, tok = tiny_hope(), Tokenizer.default()
    task = Task("t", ["def f(x):\n    return x + 1\n"] * 4, test=None)  # one batch per epoch
    level = {lv: [n for n, _ in model.named_parameters() if f".cms.levels.{lv}." in n] for lv in range(3)}
    for epochs, moving in ((3, {0}), (4, {0, 1})):
        method = CMSLevels(loop=TaskLoop(epochs=epochs, batch_size=64, seq_len=32))
        method.setup(model, tok)
        assert {n for n, p in model.named_parameters() if p.requires_grad} == {n for ns in level.values() for n in ns}
        for _ in range(2):  # a second task of as many steps: no partial sum is carried over
            before = snapshot(model)
            assert method.learn(model, task, tok)["steps"] == epochs
            moved = changed(model, before)
            assert {lv for lv, names in level.items() if set(names) & moved} == moving
