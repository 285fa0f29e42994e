"""HOPE and Hope-Attention models: streaming state, config validation, and `hope fit` with per-level optimizers."""

import json
import shutil

import pytest
import torch

from hope.cli import main
from hope.config import ModelConfig
from hope.model import HopeLM
from hope.ttl import TestTimeLearner
from tests.test_cli import fit_args, fit_recording

FAMILIES = ["hope", "hope-attention"]
SMALL = dict(
    n_layer=2,
    n_embd=32,
    n_head=2,
    vocab_size=64,
    padding_multiple=8,
    max_seq_len=128,
    hope_chunk_size=4,
    hope_memory_chunk_size=8,
    cms_levels=[
        {"hidden": 16, "tokens_per_update": 4, "steps_per_update": 1},
        {"hidden": 24, "tokens_per_update": 8, "steps_per_update": 4},
        {"hidden": 8, "tokens_per_update": 16, "steps_per_update": 16},
    ],
)


def small_model(family: str, **overrides) -> HopeLM:
    torch.manual_seed(0)
    return HopeLM(ModelConfig(family=family, **{**SMALL, **overrides})).double()


@pytest.mark.parametrize("family", FAMILIES)
def test_two_halves_equal_one_call(family):
    model = small_model(family)
    idx = torch.randint(0, 64, (2, 40))
    full, _ = model(idx)
    first, state = model(idx[:, :17])
    second, _ = model(idx[:, 17:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
def test_backward_reaches_every_parameter(family):
    model = small_model(family)
    logits, _ = model(torch.randint(0, 64, (1, 24)))
    logits.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


IN_CONTEXT = dict(cms_learn_in_context=True, cms_objective="reconstruction", cms_inner_lr=0.05)


@pytest.mark.parametrize("family", FAMILIES)
def test_learning_in_context_is_causal_and_streams_exactly(family):
    """cms_learn_in_context: perturbing token p leaves every logit before p unchanged (bit for bit) and changes
    later ones; one call equals two; the levels learn (logits differ from the same weights without it once the
    fastest level has stepped, at token 4, and not before)."""
    model = small_model(family, **IN_CONTEXT)
    idx = torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, _ = model(idx)
        perturbed = idx.clone()
        perturbed[:, 21] = (perturbed[:, 21] + 1) % 64
        logits_p, _ = model(perturbed)
        first, state = model(idx[:, :17])
        second, _ = model(idx[:, 17:], state)
        plain = small_model(family)
        plain.load_state_dict(model.state_dict())
        logits_plain, _ = plain(idx)
    assert torch.equal(logits_p[:, :21], logits[:, :21])
    assert not torch.allclose(logits_p[:, 22:], logits[:, 22:])
    torch.testing.assert_close(torch.cat([first, second], dim=1), logits, rtol=1e-10, atol=1e-10)
    assert torch.equal(logits_plain[:, :4], logits[:, :4])
    assert not torch.allclose(logits_plain[:, 4:], logits[:, 4:])


@pytest.mark.parametrize("family", FAMILIES)
def test_learning_in_context_equals_the_test_time_learner_and_trains(family):
    """The forward's chunk-parallel levels equal hope.ttl's per-piece loop (its own autograd-based code) with the same
    objective, and the learner restores the flag; the outer loss reaches every parameter through the steps."""
    model = small_model(family, **IN_CONTEXT)
    idx = torch.randint(0, 64, (2, 37), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits, _ = model(idx)
    learned, _ = TestTimeLearner(model, objective="reconstruction").step(idx)
    torch.testing.assert_close(learned, logits, rtol=1e-10, atol=1e-10)
    assert all(block.cms.learn_in_context for block in model.blocks)
    model(idx)[0].logsumexp(-1).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_learning_in_context_needs_the_local_objective():
    with pytest.raises(ValueError, match="cms_learn_in_context.*cms_objective: reconstruction"):
        ModelConfig.from_preset("hope-debug", cms_learn_in_context=True).validate()


def test_presets_build_and_are_cpu_sized():
    for family in FAMILIES:
        cfg = ModelConfig.from_preset(f"{family}-debug")
        assert cfg.family == family and cfg.n_embd == 128 and cfg.max_seq_len >= 1024
        assert HopeLM(cfg).num_parameters() < 5e6


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cms_levels": []}, "model.cms_levels is empty"),
        (
            {"cms_levels": [{"hidden": 8}, {"steps_per_update": 0}]},
            "model.cms_levels[1].steps_per_update=0 must be >= 1",
        ),
        ({"cms_levels": [{"rule": "lion"}]}, "model.cms_levels[0].rule='lion' is unknown"),
        ({"cms_levels": [{"tokens_per_update": 0}]}, "model.cms_levels[0].tokens_per_update=0 must be >= 1"),
        ({"cms_levels": [{"hidden": 0}]}, "model.cms_levels[0].hidden=0 must be >= 1"),
        ({"cms_levels": [{"lr_scale": -1.0}]}, "model.cms_levels[0].lr_scale=-1.0 must be >= 0"),
        ({"cms_levels": [{"period": 4}]}, "model.cms_levels[0] has an unknown key 'period'"),
        ({"cms_objective": "mse"}, "model.cms_objective='mse'"),
        ({"hope_chunk_size": 0}, "model.hope_chunk_size=0 must be >= 1"),
        ({"cms_inner_lr": -1.0}, "model.cms_inner_lr=-1.0"),
        ({"cms_max_step": 0.0}, "model.cms_max_step=0.0 must be > 0"),
    ],
)
def test_invalid_hope_values_are_clear(overrides, message):
    import re

    with pytest.raises(ValueError, match=re.escape(message)):
        ModelConfig(family="hope", **{**SMALL, **overrides})


# -- hope fit with the LevelOptimizer ----------------------------------------------------------------------------
HOPE_OVERRIDES = (
    '{"n_layer": 2, "n_embd": 64, "n_head": 2, "hope_chunk_size": 8, "hope_memory_chunk_size": 8, "cms_levels": ['
    '{"hidden": 32, "tokens_per_update": 4, "steps_per_update": 1, "rule": "adamw", "lr_scale": 1.0}, '
    '{"hidden": 32, "tokens_per_update": 8, "steps_per_update": 2, "rule": "sgd", "lr_scale": 0.5}, '
    '{"hidden": 32, "tokens_per_update": 16, "steps_per_update": 4, "rule": "deep_momentum", "lr_scale": 0.1}]}'
)


def hope_fit_args(root, corpus, preset, steps=6):
    return fit_args(root, corpus, "--model.preset", preset, "--model.overrides", HOPE_OVERRIDES, steps=steps)


@pytest.mark.parametrize("preset", ["hope-debug", "hope-attention-debug"])
def test_fit_logs_levels(tmp_path, text_corpus, preset):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from hope.checkpoint import load_checkpoint_file
    from hope.optim import LevelOptimizer  # noqa: F401  (the optimizer whose state dict is checked)

    root = tmp_path / "run"
    main(hope_fit_args(root, text_corpus, preset, steps=4))
    events = EventAccumulator(str(next((root / "lightning_logs").glob("version_0")))).Reload()
    tags = set(events.Tags()["scalars"])
    for level in ("base", "level1", "level2", "level3"):
        assert {f"train/{level}/updates", f"train/{level}/lr", f"train/{level}/grad_norm"} <= tags, level
    updates = {lv: events.Scalars(f"train/{lv}/updates")[-1].value for lv in ("level1", "level2", "level3")}
    assert updates == {"level1": 4, "level2": 2, "level3": 1}  # periods 1, 2, 4 after 4 optimizer steps
    ckpt = load_checkpoint_file(root / "checkpoints" / "last.ckpt")
    groups = ckpt["optimizer_states"][0]["param_groups"]
    assert {g["level"]: g["rule"] for g in groups} == {
        "base": "adamw",
        "level1": "adamw",
        "level2": "sgd",
        "level3": "deep_momentum",
    }
    assert isinstance(LevelOptimizer, type)
    assert all(g["step_count"] == ckpt["global_step"] for g in groups)


def test_levels_step_only_on_their_period(tmp_path, text_corpus):
    from hope.lit.cli import build_cli

    cli = build_cli(hope_fit_args(tmp_path / "p", text_corpus, "hope-debug", steps=3)[1:], run=False)
    fast, slow = (cli.model.model.blocks[0].cms.levels[i].mlp.down.weight for i in (0, 2))
    fast_before, slow_before = fast.detach().clone(), slow.detach().clone()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    torch.testing.assert_close(slow.detach(), slow_before, rtol=0, atol=0)  # period 4: not stepped after 3 steps
    assert not torch.equal(fast.detach(), fast_before)


def test_resume_mid_period_is_exact(tmp_path, text_corpus):
    """Step 3 is mid-period for levels 2 (period 2) and 3 (period 4): their partial gradient sums must resume."""
    full = fit_recording(hope_fit_args(tmp_path / "a", text_corpus, "hope-debug"))
    resumed_root = tmp_path / "b"
    (resumed_root / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "a" / "checkpoints" / "step000003.ckpt", resumed_root / "checkpoints" / "last.ckpt")
    resumed = fit_recording(hope_fit_args(resumed_root, text_corpus, "hope-debug"), ckpt_path="last")
    assert sorted(resumed) == [4, 5, 6]
    for step in (4, 5, 6):
        assert resumed[step] == full[step], f"step {step}: {resumed[step]} != {full[step]}"


def test_fit_learns_in_context(tmp_path, text_corpus):
    """`hope fit` with model.overrides.cms_learn_in_context on CPU: it trains, and the checkpoint's config keeps it."""
    from hope.checkpoint import load_model

    overrides = json.dumps(json.loads(HOPE_OVERRIDES) | IN_CONTEXT)
    root = tmp_path / "run"
    main(fit_args(root, text_corpus, "--model.preset", "hope-debug", "--model.overrides", overrides, steps=3))
    model = load_model(root / "checkpoints" / "last.ckpt")
    assert model.config.cms_learn_in_context and all(block.cms.learn_in_context for block in model.blocks)
