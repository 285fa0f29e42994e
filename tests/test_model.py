"""Transformer++ model: shapes, causality, attention kernels against the naive reference, init, learning."""

import math

import pytest
import torch

from hope.config import ModelConfig
from hope.model import HopeLM
from hope.ops.attention import causal_attention, causal_attention_naive, flash_attn_available
from hope.ops.attention.naive import causal_mask


def tiny(**overrides) -> ModelConfig:
    values = dict(vocab_size=100, n_layer=2, n_head=2, n_embd=32, intermediate_size=64, max_seq_len=64)
    return ModelConfig(**{**values, **overrides})


def test_shapes_and_padded_vocab():
    model = HopeLM(tiny())
    logits, state = model(torch.randint(0, 100, (3, 17)))
    assert model.config.padded_vocab_size == 128
    assert logits.shape == (3, 17, 128)
    assert state == [None, None]


@pytest.mark.parametrize("window", [None, 4])
def test_causality(window):
    torch.manual_seed(0)
    model = HopeLM(tiny(sliding_window=window)).double()
    idx = torch.randint(0, 100, (2, 20))
    changed = idx.clone()
    changed[:, 11] = (changed[:, 11] + 1) % 100
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :11], b[:, :11], rtol=0, atol=0)
    assert (a[:, 11] - b[:, 11]).abs().max() > 1e-6  # the changed token itself does matter


@pytest.mark.parametrize("window", [None, 1, 3, 7, 50])
def test_sdpa_matches_naive(window):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 19, 8, dtype=torch.float64) for _ in range(3))
    ref = causal_attention_naive(q, k, v, window)
    out = causal_attention(q, k, v, window, backend="sdpa")
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_naive_attention_is_a_plain_loop():
    """The naive reference itself, checked against a per-query loop that writes the definition out."""
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 1, 9, 4, dtype=torch.float64) for _ in range(3))
    window = 3
    ref = causal_attention_naive(q, k, v, window)
    for t in range(9):
        keys = range(max(0, t - window + 1), t + 1)
        scores = torch.stack([q[0, 0, t] @ k[0, 0, s] / 2.0 for s in keys])
        expected = (torch.softmax(scores, 0)[:, None] * torch.stack([v[0, 0, s] for s in keys])).sum(0)
        torch.testing.assert_close(ref[0, 0, t], expected)


def test_sliding_window_mask():
    mask = causal_mask(6, window=2)
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [0, 1, 1, 0, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [0, 0, 0, 1, 1, 0],
            [0, 0, 0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)
    assert torch.equal(causal_mask(4, None), torch.ones(4, 4, dtype=torch.bool).tril())


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


@pytest.mark.skipif(not flash_attn_available(), reason="flash-attn needs CUDA and the flash-attn package")
@pytest.mark.parametrize("window", [None, 64])
def test_flash_matches_sdpa(window):
    q, k, v = (torch.randn(2, 4, 256, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    ref = causal_attention(q.double(), k.double(), v.double(), window, backend="naive")
    out = causal_attention(q, k, v, window, backend="flash")
    torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=2e-2)


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
