"""Causality of every family, in float64: changing token p leaves the logits before p unchanged and changes the
logits at p. Checked for the plain forward, for calls that stream the state, and for test-time learning
(``TestTimeLearner.step``, HOPE families), whose in-context updates must not leak a token into earlier logits."""

from collections.abc import Callable

import pytest
import torch

from hope.model import HopeLM
from hope.ttl import TestTimeLearner
from tests.test_hope_model import small_model
from tests.test_model import tiny as tiny_transformer
from tests.test_srwm import srwm_model
from tests.test_titans_models import build

T = 21
POSITIONS = [3, 11, 16]  # inside the first segment and chunk, inside the second segment, at a chunk's end
ATOL = 1e-12  # exact on CPU today; room for kernels that may sum a chunk with a changed later token differently
SPLITS = [[8], [5, 13], list(range(1, T))]


def transformer(window: int | None = None) -> HopeLM:
    """A float64 Transformer++ (full attention, or a sliding window)."""
    torch.manual_seed(0)
    return HopeLM(tiny_transformer(sliding_window=window)).double()


MODELS: dict[str, Callable[[], HopeLM]] = {
    "transformer": transformer,
    "transformer-window": lambda: transformer(window=4),
    **{
        family: lambda family=family: build(family)
        for family in ("titans-mac", "titans-mag", "titans-mal", "titans-lmm")
    },
    "hope": lambda: small_model("hope"),
    "hope-attention": lambda: small_model("hope-attention"),
    "hope-attention-window": lambda: small_model("hope-attention", sliding_window=5),
    "srwm": srwm_model,
    "srwm-chunked": lambda: srwm_model(chunk_size=4),
}
STREAMING = [name for name in MODELS if not name.startswith("transformer")]  # Transformer++ keeps no state
HOPE = [name for name in MODELS if name.startswith("hope")]


def tokens(model: HopeLM) -> torch.Tensor:
    """A fixed random batch of two sequences of T tokens."""
    return torch.randint(0, model.config.vocab_size, (2, T), generator=torch.Generator().manual_seed(1))


def assert_causal(logits_of: Callable[[torch.Tensor], torch.Tensor], idx: torch.Tensor, p: int, vocab: int) -> None:
    """logits_of(idx) [B, T, V] before position p do not depend on token p, and the logits at p do."""
    changed = idx.clone()
    changed[:, p] = (changed[:, p] + 1) % vocab
    before, after = logits_of(idx), logits_of(changed)
    torch.testing.assert_close(after[:, :p], before[:, :p], rtol=0, atol=ATOL)
    assert (after[:, p] - before[:, p]).abs().max() > 1e-6, "the changed token itself must matter"


def streamed(forward, idx: torch.Tensor, splits: list[int]) -> torch.Tensor:
    """Logits of idx fed through forward(piece, state) in pieces that carry the state."""
    logits, state = [], None
    for a, b in zip([0, *splits], [*splits, idx.shape[1]], strict=True):
        out, state = forward(idx[:, a:b], state)
        logits.append(out)
    return torch.cat(logits, dim=1)


@pytest.mark.parametrize("p", POSITIONS)
@pytest.mark.parametrize("name", MODELS)
def test_forward_is_causal(name, p):
    """One call over the whole sequence."""
    model = MODELS[name]()
    assert_causal(lambda idx: model(idx)[0], tokens(model), p, model.config.vocab_size)


@pytest.mark.parametrize("splits", SPLITS, ids=["one-split", "ragged", "token-by-token"])
@pytest.mark.parametrize("name", STREAMING)
def test_streaming_is_causal(name, splits):
    """The sequence in calls that carry the state (a change before a split reaches the next call through it)."""
    model = MODELS[name]()
    for p in POSITIONS:
        assert_causal(lambda idx: streamed(model, idx, splits), tokens(model), p, model.config.vocab_size)


@pytest.mark.parametrize("splits", [[], *SPLITS], ids=["one-call", "one-split", "ragged", "token-by-token"])
@pytest.mark.parametrize(("objective", "inner_lr"), [("teach", 0.5), ("reconstruction", 0.1)])
@pytest.mark.parametrize("name", HOPE)
def test_test_time_learning_is_causal(name, objective, inner_lr, splits):
    """The CMS levels learn from every piece (periods 4, 8, 16 within 21 tokens) with a large step, and a piece
    reads only what the earlier pieces taught."""
    model = MODELS[name]()
    learner = TestTimeLearner(model, inner_lr=inner_lr, objective=objective)
    for p in POSITIONS:
        assert_causal(lambda idx: streamed(learner.step, idx, splits), tokens(model), p, model.config.vocab_size)
    logits, state = learner.step(tokens(model))
    assert all(d is not None and d[0].abs().max() > 0 for s in state for d in s.cms.delta[:2])  # it learned
    assert not torch.allclose(logits, model(tokens(model))[0])


def test_a_leak_is_caught():
    """Sanity: the check fails for a model that reads the sequence backwards (every logit sees later tokens)."""
    model = MODELS["transformer"]()
    with pytest.raises(AssertionError):
        assert_causal(lambda idx: model(idx.flip(1))[0].flip(1), tokens(model), 11, model.config.vocab_size)
