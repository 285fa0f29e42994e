"""Learning while reading in the evaluations (hope.online): through the window plans of hope.evaluation.scoring the
scores equal loops written out, no token is learned before it is scored, the consolidation cap holds per CMS level,
an evaluation leaves its model as it was, and a family without CMS levels gets a clear error."""

import math

import pytest
import torch

from hope.dynamic import DynamicConfig
from hope.evaluation.scoring import rolling_windows, score_windows, strided_windows
from hope.online import OnlineLM, TTLConfig, learning, learning_from_args, online_model
from hope.ttl import TestTimeLearner
from tests.test_causality import MODELS
from tests.test_dynamic import krause_loop
from tests.test_hope_model import small_model as hope_model
from tests.test_ttl import naive_loop, small_model

N = 41  # a document of 41 tokens: 40 targets


def stream(model, n: int = N, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, model.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(seed))


def logprobs(logits: torch.Tensor, idx: torch.Tensor, vocab: int) -> torch.Tensor:
    """log p(idx[k+1]) from logits[k], over the real vocabulary (logits of at least the first T - 1 positions)."""
    logp = torch.log_softmax(logits[0, : idx.shape[1] - 1, :vocab].float(), -1)
    return logp.gather(-1, idx[0, 1:, None])[:, 0].double()


@pytest.mark.parametrize(
    "windows",
    [rolling_windows(N, 16), strided_windows(N, 17, 8)],
    ids=["rolling", "strided"],  # call boundaries on multiples of the fastest period (4), as the loop's chunks
)
def test_ttl_scores_equal_the_per_chunk_loop(windows):
    """score_windows with a learning HOPE equals test_ttl's naive Eq. 31 loop over the whole stream: every window
    starts from what was learned from exactly the tokens before it (overlaps re-read, never learned twice)."""
    model, idx = small_model("hope"), stream(small_model("hope"))
    reader = online_model(model, ttl=TTLConfig(inner_lr=0.05))
    scored = score_windows(reader, idx[0], windows, carry=True)
    reference, _ = naive_loop(model, idx, 0.05)
    torch.testing.assert_close(scored.logprobs, logprobs(reference, idx, 64), rtol=1e-6, atol=1e-6)
    plain = score_windows(model, idx[0], windows, carry=True)
    assert (scored.logprobs - plain.logprobs).abs().max() > 1e-3  # it learned


def test_dynamic_scores_equal_krause_loop_window_by_window():
    """Disjoint rolling windows of 16 over 48 targets: a Transformer++ reads each window afresh while the learned
    weights (and the RMS statistics) carry on; Krause's loop over the same three calls."""
    model, cfg = MODELS["transformer"](), DynamicConfig(lr=0.02, rule="rms", segment=5)
    idx = stream(model, 49)
    scored = score_windows(online_model(model, dynamic=cfg), idx[0], rolling_windows(49, 16), carry=True)
    reference = krause_loop(model, idx, cfg, calls=[(0, 16), (16, 32), (32, 48)])
    torch.testing.assert_close(scored.logprobs, logprobs(reference, idx, 100), rtol=1e-6, atol=1e-6)
    assert (scored.logprobs - score_windows(model, idx[0], rolling_windows(49, 16)).logprobs).abs().max() > 1e-3


READERS = {
    "hope-ttl": lambda: online_model(small_model("hope"), ttl=TTLConfig(inner_lr=0.5)),
    "hope-attention-ttl": lambda: online_model(small_model("hope-attention"), ttl=TTLConfig(inner_lr=0.5)),
    "transformer-dynamic": lambda: online_model(MODELS["transformer"](), dynamic=DynamicConfig(0.05, "sgd", 3)),
    "titans-lmm-dynamic": lambda: online_model(MODELS["titans-lmm"](), dynamic=DynamicConfig(0.05, "sgd", 3)),
}


@pytest.mark.parametrize("plan", ["rolling", "strided"])
@pytest.mark.parametrize("name", READERS)
def test_no_token_is_learned_before_it_is_scored(name, plan):
    """Changing token p of a 33-token stream leaves the score of every earlier target unchanged, through the
    window plans (calls that carry the learning, overlaps re-read) and with large steps."""
    reader = READERS[name]()
    idx = stream(reader, 33)[0]
    windows = rolling_windows(33, 12) if plan == "rolling" else strided_windows(33, 12, 6)
    before = score_windows(reader, idx, windows, carry=True).logprobs
    for p in (9, 21):
        changed = idx.clone()
        changed[p] = (changed[p] + 1) % reader.config.vocab_size
        after = score_windows(reader, changed, windows, carry=True).logprobs
        torch.testing.assert_close(after[: p - 1], before[: p - 1], rtol=0, atol=1e-9)  # targets 1 .. p-1
        assert (after[p:] - before[p:]).abs().max() > 1e-6  # later scores read the change


def test_ttl_needs_cms_levels():
    with pytest.raises(ValueError, match=r"family='transformer' has no CMS levels.*use dynamic evaluation"):
        online_model(MODELS["transformer"](), ttl=TTLConfig())
    with pytest.raises(ValueError, match="not both"):
        online_model(small_model("hope"), ttl=TTLConfig(), dynamic=DynamicConfig())
    assert online_model(small_model("hope")).__class__.__name__ == "HopeLM"  # no learning: the model itself


@pytest.mark.parametrize("family", ["hope", "hope-attention"])
def test_consolidation_is_capped_per_level(family):
    model = small_model(family)
    learner = TestTimeLearner(model, inner_lr=0.5)
    _, state = learner.step(stream(model, 24))
    levels = [(cms.levels[lv], s.cms.delta[lv]) for cms, s in zip(learner.cms, state, strict=True) for lv in (0, 1)]
    before = [[w.detach().clone() for w in level.weights()] for level, _ in levels]
    cap = 1e-3
    learner.consolidate(state, max_change=cap)
    for (level, delta), old in zip(levels, before, strict=True):
        change = [w.detach() - o for w, o in zip(level.weights(), old, strict=True)]
        ratio = math.sqrt(sum(float(c.pow(2).sum()) for c in change) / sum(float(o.pow(2).sum()) for o in old))
        raw = math.sqrt(sum(float(d.pow(2).sum()) for d in delta) / sum(float(o.pow(2).sum()) for o in old))
        assert raw > cap and ratio == pytest.approx(cap, rel=1e-9)  # large steps: every level was capped
        for c, d in zip(change, delta, strict=True):  # the direction is kept
            torch.testing.assert_close(c / ratio, d[0] / raw, rtol=1e-7, atol=1e-12)


def test_an_evaluation_leaves_its_model_as_it_was():
    """Consolidating between documents changes the scores of later documents; afterwards the weights and the CMS
    step size are as before."""
    from hope.evaluation.perplexity import evaluate_perplexity
    from hope.tokenizer import Tokenizer

    model = hope_model("hope", vocab_size=8192).float()
    tok, texts = Tokenizer.default(), ["def f(x):\n    return x * 2\n" * 2] * 2
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    runs = {
        consolidate: evaluate_perplexity(
            model,
            tok,
            texts,
            window=32,
            state="document",
            progress=False,
            ttl=TTLConfig(inner_lr=0.3, consolidate=consolidate),
        )["token_perplexity"]
        for consolidate in (False, True)
    }
    assert runs[True] < runs[False]  # the second copy reads what the first taught
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert model.blocks[0].cms.inner_lr == [model.config.cms_inner_lr] * len(model.config.cms_levels)
    with pytest.raises(ValueError, match="each document's end"):
        evaluate_perplexity(model, tok, texts, state="reset", progress=False, ttl=TTLConfig(consolidate=True))


def test_learning_restores_after_an_error():
    model = small_model("hope")
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with (
        pytest.raises(RuntimeError, match="boom"),
        learning(model, ttl=TTLConfig(inner_lr=0.7, max_step=0.1)) as reader,
    ):
        assert isinstance(reader, OnlineLM) and model.blocks[0].cms.inner_lr == [0.7, 0.7]
        assert model.blocks[0].cms.max_step == 0.1
        with torch.no_grad():
            model.head.weight.add_(1.0)
        raise RuntimeError("boom")
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert model.blocks[0].cms.inner_lr != [0.7, 0.7] and model.blocks[0].cms.max_step is None


def test_learning_from_flat_arguments():
    ttl, dynamic = learning_from_args({"checkpoint": "x", "ttl": True, "ttl_inner_lr": 1e-3})
    assert ttl == TTLConfig(inner_lr=1e-3) and dynamic is None
    ttl, dynamic = learning_from_args({"dynamic_lr": 1e-4, "dynamic_rule": "sgd"})
    assert ttl is None and dynamic == DynamicConfig(lr=1e-4, rule="sgd")
    assert learning_from_args({"ttl": "false", "batch_size": 4}) == (None, None)
    with pytest.raises(ValueError, match="ttl_inner_lr"):
        learning_from_args({"ttl_innerlr": 1e-3})
