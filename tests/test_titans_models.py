"""Titans models MAC / MAG / MAL / LMM: shapes, MAC's retrieve -> attend -> write order, persistent tokens,
ablation switches, exact streaming, gradients, config errors, and `hope fit` with every debug preset. The attention
itself (persistent prefix, windows, RoPE) is tested in tests/test_attention.py, causality in tests/test_causality.py."""

import re

import pytest
import torch

from hope.checkpoint import load_checkpoint_file
from hope.cli import main
from hope.config import ModelConfig
from hope.layers.titans import HybridState, MACState
from hope.model import HopeLM
from tests.test_cli import fit_args

FAMILIES = ["titans-mac", "titans-mag", "titans-mal", "titans-lmm"]


V, T = 50, 21  # T = 2 segments of 8 + 5 tokens; 5 chunks of 4 + 1; more than 3 windows of 6


def tiny(family: str, **overrides) -> ModelConfig:
    values = dict(
        family=family,
        vocab_size=V,
        n_layer=2,
        n_head=2,
        n_embd=16,
        intermediate_size=32,
        max_seq_len=64,
        memory_depth=2,
        memory_expansion=2,
        memory_chunk_size=4,
        segment_len=8,
        n_persistent=2,
        memory_max_lr=0.25,
    )  # large inner steps, so that the memory visibly matters
    if family in ("titans-mag", "titans-mal"):
        values["sliding_window"] = 6
    return ModelConfig(**{**values, **overrides})


def build(family: str, seed: int = 0, **overrides) -> HopeLM:
    """A float64 model whose memory forgets visibly (alpha ~ 0.12 instead of ~3e-4)."""
    torch.manual_seed(seed)
    model = HopeLM(tiny(family, **overrides)).double()
    with torch.no_grad():
        for block in model.blocks:
            block.memory.gate_proj.bias.view(3, -1)[2] = -2.0
    return model


def tokens(length: int = T, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (2, length), generator=torch.Generator().manual_seed(seed))


def flat(state) -> list[torch.Tensor]:
    """Every tensor in a nested state, in order."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, tuple | list):
        return [t for part in state for t in flat(part)]
    return []  # None, ints


def stream(model: HopeLM, idx: torch.Tensor, splits: list[int]):
    logits, state = [], None
    for a, b in zip([0, *splits], [*splits, idx.shape[1]], strict=True):
        out, state = model(idx[:, a:b], state)
        logits.append(out)
    return torch.cat(logits, dim=1), state


# -- shapes, streaming -------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_shapes_and_state(family):
    model = build(family)
    logits, state = model(tokens())
    assert logits.shape == (2, T, 64) and len(state) == 2 and model.carries_state
    expected = {"titans-mac": MACState, "titans-mag": HybridState, "titans-mal": HybridState}.get(family)
    if expected is not None:
        assert isinstance(state[0], expected)
    if family in ("titans-mag", "titans-mal"):
        assert state[0].attention.keys.shape == (2, 2, 5, 8)  # the last window - 1 keys
        assert state[0].attention.position == T
    if family == "titans-mac":
        assert state[0].keys.shape == (2, 2, 2, 5, 8)  # h and tokens of the 5 tokens of the unfinished segment


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "splits",
    [[8], [16], [5], [3, 7, 12, 13, 19], list(range(1, T))],
    ids=["segment", "2-segments", "mid", "ragged", "token-by-token"],
)
def test_streaming_equals_one_call(family, splits):
    """One call == the same tokens in pieces with the state carried, at segment/chunk boundaries and anywhere."""
    model, idx = build(family), tokens()
    logits, state = model(idx)
    logits2, state2 = stream(model, idx, splits)
    torch.testing.assert_close(logits2, logits, rtol=1e-10, atol=1e-12)
    a, b = flat(state), flat(state2)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_state_is_needed_for_streaming(family):
    """Sanity: dropping the state at the split changes the continuation, so the streaming test can fail."""
    model, idx = build(family), tokens()
    logits, _ = model(idx)
    assert not torch.allclose(model(idx[:, 8:])[0], logits[:, 8:])


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_reach_every_parameter(family):
    model = build(family)
    logits, _ = model(tokens())
    (logits * torch.linspace(-1, 1, logits.shape[-1], dtype=torch.float64)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_falls_over_30_steps(family):
    torch.manual_seed(0)
    # float32, the default inner step size, and test_model's width (d=32), where Transformer++ reaches ~0.45
    model = HopeLM(tiny(family, memory_max_lr=None, n_embd=32, intermediate_size=64))
    data = torch.randint(0, V, (8, 33), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        logits, _ = model(data[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits[..., :V].flatten(0, 1), data[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


# -- MAC: retrieve -> attend -> write ---------------------------------------------------------------------
def retrieval_weights_of_each_segment(model: HopeLM, idx: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """The memory weights every retrieval of the first block read, in order (one read per segment here)."""
    block, seen = model.blocks[0], []
    read = block.memory.read

    def spy(x, state):
        seen.append(tuple(W.detach().clone() for W in state.weights))
        return read(x, state)

    block.memory.read = spy
    model(idx)
    return seen


def test_mac_retrieval_reads_only_earlier_segments():
    """h_t = M*_{t-1}(q): the weights segment 1 retrieves from do not depend on segment 1's tokens (lucidrains'
    write-before-read would make them), but do depend on segment 0's."""
    model, idx = build("titans-mac", n_layer=1), tokens(16)
    changed_here, changed_before = idx.clone(), idx.clone()
    changed_here[:, 8:] = (changed_here[:, 8:] + 1) % V
    changed_before[:, 0] = (changed_before[:, 0] + 1) % V
    reference = retrieval_weights_of_each_segment(model, idx)
    assert len(reference) == 2
    for W, W_here in zip(reference[1], retrieval_weights_of_each_segment(model, changed_here)[1], strict=True):
        torch.testing.assert_close(W, W_here, rtol=0, atol=0)
    assert not torch.allclose(reference[1][0], retrieval_weights_of_each_segment(model, changed_before)[1][0])


def test_mac_segments_talk_only_through_the_memory_write():
    """Attention is segment-local, so without the convolutions (whose history would carry y of segment 0's last
    tokens) token 0 can reach the next segment only through the memory written after attention; with the inner
    step size theta forced to 0 (and the forget gate made constant) it cannot."""
    idx = tokens(16)
    changed = idx.clone()
    changed[:, 0] = (changed[:, 0] + 1) % V
    model = build("titans-mac", memory_conv=False)
    assert (model(idx)[0][:, 8:] - model(changed)[0][:, 8:]).abs().max() > 1e-6
    with torch.no_grad():
        for block in model.blocks:
            block.memory.gate_proj.weight.view(3, 2, -1)[[0, 2]] = 0.0  # alpha no longer depends on the tokens
            block.memory.gate_proj.bias.view(3, 2)[0] = -float("inf")  # theta = max_lr * sigmoid(-inf) = 0
    torch.testing.assert_close(model(idx)[0][:, 8:], model(changed)[0][:, 8:], rtol=0, atol=1e-13)


# -- persistent tokens ------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_persistent_tokens(family):
    model, idx = build(family), tokens()
    assert all(block.persistent.shape == (2, 16) for block in model.blocks)
    logits, _ = model(idx)
    with torch.no_grad():
        model.blocks[0].persistent.add_(0.5)
    assert (model(idx)[0][:, -1] - logits[:, -1]).abs().max() > 1e-6  # still felt 20 tokens later
    without = build(family, n_persistent=0)
    assert all(block.persistent is None for block in without.blocks)
    assert model.num_parameters() - without.num_parameters() == 2 * 2 * 16


# -- ablation switches (Titans Table 5) -----------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("switch", "gate"), [("memory_momentum", 1), ("memory_weight_decay", 2)])
def test_no_momentum_and_no_weight_decay_equal_a_zero_gate(family, switch, gate):
    """memory_momentum=False == eta forced to exactly 0; memory_weight_decay=False == alpha forced to 0."""
    idx = tokens()
    ablated, full = build(family, **{switch: False}), build(family)
    full.load_state_dict(ablated.state_dict())
    assert not torch.allclose(ablated(idx)[0], full(idx)[0])
    with torch.no_grad():
        for block in full.blocks:
            block.memory.gate_proj.weight.view(3, 2, -1)[gate] = 0.0
            block.memory.gate_proj.bias.view(3, 2)[gate] = -float("inf")  # sigmoid(-inf) = 0 exactly
    torch.testing.assert_close(full(idx)[0], ablated(idx)[0], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("family", FAMILIES)
def test_linear_memory_and_no_convolution(family):
    idx = tokens()
    reference = build(family)(idx)[0]
    linear = build(family, memory_linear=True)
    assert [tuple(W.shape) for W in linear.blocks[0].memory.memory_init] == [(2, 8, 8)]
    assert not torch.allclose(linear(idx)[0], reference)
    no_conv = build(family, memory_conv=False)
    assert no_conv.blocks[0].memory.q_conv is None and not any("conv" in n for n, _ in no_conv.named_parameters())
    logits, state = no_conv(idx)
    assert not torch.allclose(logits, reference)
    torch.testing.assert_close(stream(no_conv, idx, [5, 13])[0], logits, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("alpha_init", [None, -3.0])
def test_init_keeps_the_memory_gate_biases(alpha_init):
    """HopeLM's generic init zeroes Linear biases; the memory's own reset must run after it (alpha bias
    memory_alpha_init, -8 by default; theta and eta biases 0)."""
    overrides = {} if alpha_init is None else {"memory_alpha_init": alpha_init}
    model = HopeLM(tiny("titans-lmm", **overrides))
    expected = torch.tensor([[0.0], [0.0], [-8.0 if alpha_init is None else alpha_init]]).expand(3, 2)
    torch.testing.assert_close(model.blocks[0].memory.gate_proj.bias.view(3, 2), expected)


# -- config -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("family", "overrides", "message"),
    [
        ("titans-mag", {"sliding_window": None}, "needs model.sliding_window"),
        ("titans-mac", {"sliding_window": 8}, "sliding_window=8 is not used by model.family='titans-mac'"),
        ("titans-mac", {"segment_len": 10}, "segment_len=10 must be a multiple of model.memory_chunk_size=4"),
        ("titans-mal", {"attn_backend": "flash"}, "attn_backend='flash' cannot express"),
        ("titans-lmm", {"n_persistent": -1}, "n_persistent=-1 must be >= 0"),
        ("titans-mac", {"head_dim": 4}, "must be equal"),
        ("titans-lmm", {"memory_chunk_size": 0}, "memory_chunk_size=0 must be >= 1"),
    ],
)
def test_invalid_titans_configs_are_clear(family, overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tiny(family, **overrides)


# -- `hope fit` with every debug preset --------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_fit_runs_each_debug_preset(family, tmp_path, text_corpus):
    root = tmp_path / "run"
    overrides = '{"n_layer": 1, "n_embd": 64, "n_head": 2, "intermediate_size": 128}'
    main(fit_args(root, text_corpus, "--model.preset", f"{family}-debug", "--model.overrides", overrides, steps=2))
    ckpt = load_checkpoint_file(root / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2 and ckpt["model_config"]["family"] == family
