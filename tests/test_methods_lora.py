"""LoRA: only adapters train, base weights stay bit-identical, merge/unmerge round-trips, removal gives plain models."""

import pytest
import torch

from hope.continual.methods import LoRA
from hope.continual.params import configure_trainable
from hope.layers.lora import LoRALinear, lora_modules, merge_lora, remove_lora, unmerge_lora
from tests.test_finetune_params import changed, random_batch, snapshot, tiny_model, train_steps


def lora_model(**kwargs):
    model, method = tiny_model(), LoRA(rank=4, alpha=8.0, **kwargs)
    base = snapshot(model)
    method.prepare(model)
    configure_trainable(model, method.trains)
    return model, method, base


def test_fresh_adapter_changes_nothing():
    model, _, _ = lora_model()
    plain = tiny_model()
    x = random_batch()["input_ids"]
    torch.testing.assert_close(model(x)[0], plain(x)[0], rtol=0, atol=0)


def test_only_adapters_train_and_base_stays_bit_identical():
    model, method, base = lora_model(targets=["blocks.*.attn.*"])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"blocks.{b}.attn.{m}.lora_{ab}" for b in (0, 1) for m in ("qkv", "proj") for ab in "ab"
    }
    before = snapshot(model)
    train_steps(method, model, steps=3)
    assert changed(model, before) == {n for n in before if n.endswith("lora_a") or n.endswith("lora_b")}
    for name, value in base.items():  # the names of the base weights are unchanged by wrapping
        assert torch.equal(dict(model.named_parameters())[name], value), name


def test_merge_unmerge_round_trip_and_same_outputs():
    model, method, base = lora_model(dropout=0.1)
    train_steps(method, model, steps=2)
    model.eval()
    x = random_batch(7)["input_ids"]
    unmerged = model(x)[0]
    merge_lora(model)
    assert all(m.merged for m in lora_modules(model))
    torch.testing.assert_close(model(x)[0], unmerged, rtol=1e-5, atol=1e-5)
    assert not torch.equal(model.blocks[0].attn.qkv.weight, base["blocks.0.attn.qkv.weight"])
    unmerge_lora(model)
    for name, value in base.items():  # back to the base weights, up to float rounding (as in peft)
        torch.testing.assert_close(dict(model.named_parameters())[name], value, rtol=0, atol=1e-6)
    torch.testing.assert_close(model(x)[0], unmerged, rtol=1e-5, atol=1e-5)


def test_remove_lora_gives_plain_model():
    model, method, _ = lora_model()
    train_steps(method, model, steps=2)
    model.eval()
    x = random_batch(3)["input_ids"]
    expected = model(x)[0]
    remove_lora(model)
    assert not lora_modules(model) and not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == set(tiny_model().state_dict())
    torch.testing.assert_close(model(x)[0], expected, rtol=1e-5, atol=1e-5)


def test_targets_must_match():
    with pytest.raises(ValueError, match="match no linear layer"):
        LoRA(targets=["blocks.*.nothing"]).prepare(tiny_model())
