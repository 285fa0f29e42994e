"""Freezing by name pattern, per-group learning rates, depths; helpers for the method tests (tiny model, steps)."""

import pytest
import torch

from hope.config import ModelConfig
from hope.continual.finetune import step_loss
from hope.continual.methods import FullFinetune
from hope.continual.params import configure_trainable, depth, matches, param_groups
from hope.model import HopeLM


def tiny_model(n_layer: int = 2, **overrides) -> HopeLM:
    torch.manual_seed(0)
    config = ModelConfig.from_preset(
        "debug", n_layer=n_layer, n_embd=32, n_head=2, intermediate_size=64, max_seq_len=64, **overrides
    )
    return HopeLM(config)


def random_batch(seed: int = 0, batch_size: int = 4, seq_len: int = 16, vocab: int = 8192) -> dict:
    tokens = torch.randint(vocab, (batch_size, seq_len + 1), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}


def train_steps(method, model, steps: int = 3, lr: float = 1e-2, batch_size: int = 4) -> torch.optim.Optimizer:
    """``steps`` optimizer steps through the method's hooks, as ``hope finetune`` and ``learn`` take them."""
    optimizer = method.make_optimizer(param_groups(model, lr, 0.0, method.lr_scales(model)))
    model.train()
    for step in range(steps):
        batch = method.mix_batch(random_batch(step, batch_size), step)
        loss, _, _ = step_loss(method, model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        method.before_optimizer_step(model, step)
        optimizer.step()
    return optimizer


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(model, before: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


def test_patterns_glob_and_regex():
    assert matches("blocks.3.attn.qkv.weight", "blocks.*.attn.*")
    assert matches("blocks.3.cms.levels.0.up.weight", "blocks.*.cms.levels.0.*")
    assert not matches("blocks.3.cms.levels.1.up.weight", "blocks.*.cms.levels.0.*")
    assert matches("blocks.12.mlp.up.weight", r"re:blocks\.1\d\..*") and not matches(
        "blocks.2.mlp.up.weight", r"re:blocks\.1\d\..*"
    )


def test_depths():
    assert [
        depth(n, 4)
        for n in ("embed.weight", "blocks.0.attn.qkv.weight", "blocks.3.mlp.up.weight", "norm.weight", "head.weight")
    ] == [0, 1, 4, 5, 5]


def test_frozen_parameters_do_not_change():
    model, method = tiny_model(), FullFinetune()
    trainable = configure_trainable(model, method.trains, freeze=["embed.*", "blocks.0.*"])
    assert "embed.weight" not in trainable and not any(n.startswith("blocks.0.") for n in trainable)
    before = snapshot(model)
    train_steps(method, model)
    moved = changed(model, before)
    assert moved and all(not n.startswith(("embed.", "blocks.0.")) for n in moved)
    assert moved == {n for n, p in model.named_parameters() if p.requires_grad}


def test_train_only_then_freeze():
    model = tiny_model()
    trainable = configure_trainable(model, freeze=["blocks.1.mlp.down.*"], train_only=["blocks.1.mlp.*"])
    assert sorted(trainable) == ["blocks.1.mlp.gate.weight", "blocks.1.mlp.up.weight"]


def test_pattern_that_matches_nothing_is_an_error():
    with pytest.raises(ValueError, match=r"freeze: pattern 'block.0.\*' matches no parameter"):
        configure_trainable(tiny_model(), freeze=["block.0.*"])
    with pytest.raises(ValueError, match="no parameter is left to train"):
        configure_trainable(tiny_model(), freeze=["*"])


def test_group_lr_by_pattern_first_match_wins():
    model = tiny_model()
    groups = param_groups(model, 1e-3, 0.1, group_lr={"head.*": 1e-4, "blocks.*.attn.*": 5e-4, "blocks.*": 2e-4})
    lr_of = {name: g["lr"] for g in groups for name in g["names"]}
    assert lr_of["head.weight"] == 1e-4 and lr_of["blocks.0.attn.qkv.weight"] == 5e-4
    assert lr_of["blocks.1.mlp.up.weight"] == 2e-4 and lr_of["embed.weight"] == 1e-3
    decay_of = {name: g["weight_decay"] for g in groups for name in g["names"]}
    assert decay_of["embed.weight"] == 0.1 and decay_of["norm.weight"] == 0.0
