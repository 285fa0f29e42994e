"""Transformer++ model: shapes, sliding window, the naive backend in the model, init, learning (causality of every
family: tests/test_causality.py)."""

import math

import pytest
import torch

from hope.config import ModelConfig
from hope.model import HopeLM


def tiny(**overrides) -> ModelConfig:
    values = dict(vocab_size=100, n_layer=2, n_head=2, n_embd=32, intermediate_size=64, max_seq_len=64)
    return ModelConfig(**{**values, **overrides})


def test_shapes_and_padded_vocab():
    model = HopeLM(tiny())
    logits, state = model(torch.randint(0, 100, (3, 17)))
    assert model.config.padded_vocab_size == 128
    assert logits.shape == (3, 17, 128)
    assert state == [None, None]


def test_sliding_window_limits_receptive_field():
    """With window w and L layers a token sees at most L*(w-1) tokens back."""
    torch.manual_seed(0)
    model = HopeLM(tiny(sliding_window=3)).double()  # 2 layers: receptive field 4 tokens back
    idx = torch.randint(0, 100, (1, 20))
    changed = idx.clone()
    changed[0, 5] = (changed[0, 5] + 1) % 100
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[0, 10:], b[0, 10:], rtol=0, atol=0)
    assert (a[0, 9] - b[0, 9]).abs().max() > 1e-9


def test_naive_backend_matches_sdpa_in_the_model():
    torch.manual_seed(0)
    model = HopeLM(tiny()).double()
    idx = torch.randint(0, 100, (2, 16))
    ref, _ = model(idx)
    model_naive = HopeLM(tiny(attn_backend="naive")).double()
    model_naive.load_state_dict(model.state_dict())
    out, _ = model_naive(idx)
    torch.testing.assert_close(out, ref)


def test_init_scales_residual_projections():
    torch.manual_seed(0)
    cfg = tiny(n_embd=256, intermediate_size=512, n_layer=8)
    model = HopeLM(cfg)
    residual = cfg.init_std / math.sqrt(2 * cfg.n_layer)
    assert model.blocks[0].attn.proj.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert model.blocks[0].mlp.down.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(cfg.init_std, rel=0.05)
    assert torch.equal(model.norm.weight, torch.ones(256))


def test_tied_embeddings_share_storage():
    model = HopeLM(tiny(tie_embeddings=True))
    assert model.head.weight is model.embed.weight


def test_too_long_input_is_a_clear_error():
    model = HopeLM(tiny(max_seq_len=8))
    with pytest.raises(ValueError, match="max_seq_len=8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_loss_falls_over_30_steps():
    torch.manual_seed(0)
    model = HopeLM(tiny())
    data = torch.randint(0, 100, (8, 33))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        logits, _ = model(data[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), data[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
