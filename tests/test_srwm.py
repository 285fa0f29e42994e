"""The SRWM family: the layer with the fast op equals it with the literal reference (outputs and every parameter's
gradient), exact streaming at any split, exact generation, gradients everywhere, config errors, `hope fit`."""

import re

import pytest
import torch

from hope.checkpoint import load_checkpoint_file
from hope.cli import main
from hope.config import ModelConfig
from hope.generate import generate
from hope.layers.srwm import SelfReferentialWeightMatrix
from hope.model import HopeLM
from hope.ops.srwm import naive
from tests.test_cli import fit_args
from tests.test_generate import recompute
from tests.test_titans_models import V, flat, stream, tokens

T = 21


def srwm_model(chunk_size: int = 1, seed: int = 0, **overrides) -> HopeLM:
    """A float64 two-layer SRWM model with visible self-modification (every learning rate ~0.5 at init)."""
    torch.manual_seed(seed)
    values = dict(family="srwm", vocab_size=V, n_layer=2, n_head=2, n_embd=16, intermediate_size=32, max_seq_len=64)
    return HopeLM(ModelConfig(**{**values, "srwm_chunk_size": chunk_size, **overrides})).double()


def layer_outputs_and_grads(layer: SelfReferentialWeightMatrix, x: torch.Tensor):
    """y and the gradients of a fixed random functional of y w.r.t. every parameter."""
    y, _ = layer(x)
    loss = (y * torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(7))).sum()
    return [y.detach(), *torch.autograd.grad(loss, list(layer.parameters()))]


@pytest.mark.parametrize("chunk_size", [1, 3])
@pytest.mark.parametrize("input_softmax", [False, True])
def test_layer_fast_op_equals_reference(chunk_size, input_softmax):
    x = torch.randn(2, 10, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    results = []
    for op in (None, naive.srwm):
        torch.manual_seed(0)
        layer = SelfReferentialWeightMatrix(16, 2, chunk_size, input_softmax, op=op).double()
        results.append(layer_outputs_and_grads(layer, x))
    for got, ref in zip(*results, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_the_matrix_modifies_itself():
    """The output depends on the earlier tokens through W_t (not only on the current token, as at W_0)."""
    layer = SelfReferentialWeightMatrix(16, 2, conv_kernel=0).double()  # no other path between tokens
    x = torch.randn(1, 6, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y_seq, state = layer(x)
    y_alone, _ = layer(x[:, -1:])
    assert (y_seq[:, -1] - y_alone[:, 0]).abs().max() > 1e-3
    assert (state.weights - layer.weights).abs().max() > 1e-3


@pytest.mark.parametrize(("chunk_size", "conv"), [(1, 4), (4, 4), (1, 0)])
@pytest.mark.parametrize("splits", [[8], [5, 13], list(range(1, T))], ids=["one-split", "ragged", "token-by-token"])
def test_streaming_equals_one_call(chunk_size, conv, splits):
    """Logits and the final state are the same for one call and for calls that carry the state (mid-chunk too)."""
    model, idx = srwm_model(chunk_size, srwm_conv_kernel=conv), tokens(T)
    logits, state = model(idx)
    logits_s, state_s = stream(model, idx, splits)
    torch.testing.assert_close(logits_s, logits, rtol=1e-10, atol=1e-12)
    for a, b in zip(flat(state_s), flat(state), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert state[0].pending.shape[2] == T % chunk_size  # the unfinished chunk waits in the state


@pytest.mark.parametrize("chunk_size", [1, 4])
def test_greedy_generation_equals_full_recompute(chunk_size):
    model, prompt = srwm_model(chunk_size), tokens(11)
    expected, _ = recompute(model, prompt, 9)
    out, state = generate(model, prompt, 9, temperature=0)
    assert torch.equal(out, expected) and state is not None and model.carries_state


def test_every_parameter_gets_a_gradient():
    model = srwm_model()
    logits, _ = model(tokens(T))
    logits.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert missing == []


def test_init_follows_the_authors():
    """W_0 ~ N(0, 1/D) with the q columns 100x smaller; the output projection has the residual (GPT-2) init."""
    model = HopeLM(ModelConfig.from_preset("srwm-debug"))
    W, D = model.blocks[0].mixer.weights, 32
    assert abs(W[..., :D].std().item() * D**0.5 - 1) < 0.05
    assert abs(W[..., 2 * D : 3 * D].std().item() * D**0.5 - 0.01) < 0.001
    assert abs(model.blocks[0].mixer.out_proj.weight.std().item() - 0.02 / 8**0.5) < 0.001


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"srwm_chunk_size": 0}, "model.srwm_chunk_size=0 must be >= 1"),
        ({"srwm_conv_kernel": -1}, "model.srwm_conv_kernel=-1 must be >= 0"),
        ({"sliding_window": 8}, "model.sliding_window=8 is not used by model.family='srwm'"),
        ({"head_dim": 4}, "leave model.head_dim null"),
    ],
)
def test_invalid_srwm_configs_are_clear(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        srwm_model(**overrides)


def test_fit_runs_the_debug_preset(tmp_path, text_corpus):
    root = tmp_path / "run"
    overrides = '{"n_layer": 1, "n_embd": 64, "n_head": 2, "intermediate_size": 128}'
    main(fit_args(root, text_corpus, "--model.preset", "srwm-debug", "--model.overrides", overrides, steps=2))
    ckpt = load_checkpoint_file(root / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2 and ckpt["model_config"]["family"] == "srwm"
