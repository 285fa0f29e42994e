"""Dynamic evaluation (hope.dynamic): equals Krause's loop written with torch's own optimizers, scores a segment
before it learns from it, is plain evaluation at lr 0, learns repeated text, and caps a consolidation."""

import copy

import pytest
import torch
from torch.utils._pytree import tree_map

from hope.dynamic import DynamicConfig, DynamicEvaluator
from hope.loss import next_token_loss
from tests.test_causality import MODELS, assert_causal, streamed

FAMILIES = ["transformer", "titans-mac", "hope", "hope-attention"]
T = 21


def tokens(model, length: int = T, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(seed))


def krause_loop(model, idx_1T: torch.Tensor, cfg: DynamicConfig, calls: list[tuple[int, int]] | None = None):
    """Dynamic evaluation written out on a copy of the model, over the calls ``[start, end)`` read in order (default:
    one call): per segment, the logits with the current weights, then (decay toward the start, then) a torch.optim
    step on the mean loss of the segment's targets inside the call. rms is Adam without momentum (betas (0, beta)):
    m = g, v = beta v + (1 - beta) g^2, step lr * g / (sqrt(v / (1 - beta^k)) + eps)."""
    model = copy.deepcopy(model)
    start = [p.detach().clone() for p in model.parameters()]
    if cfg.rule == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.0, cfg.beta), eps=cfg.eps)
    logits, state = [], None
    for first, last in calls or [(0, idx_1T.shape[1])]:
        for a in range(first, last, cfg.segment):
            b = min(last, a + cfg.segment)
            if model.carries_state:  # the context is the state after the previous segment
                out, state = model(idx_1T[:, a:b], state)
                # cloned, not only detached: a state may hold views of the initial weights, which opt.step changes
                state = tree_map(lambda x: x.detach().clone() if isinstance(x, torch.Tensor) else x, state)
            else:  # the context is the call's tokens up to the segment's end
                out = model(idx_1T[:, first:b])[0][:, a - first :]
            logits.append(out.detach())
            n = min(b, last - 1) - a
            if n > 0:
                opt.zero_grad()
                next_token_loss(out[:, :n], idx_1T[:, a + 1 : a + 1 + n]).backward()
                with torch.no_grad():
                    for p, p0 in zip(model.parameters(), start, strict=True):
                        p.grad = torch.zeros_like(p) if p.grad is None else p.grad  # not reached: its gradient is 0
                        p.copy_(p0 + (1 - cfg.decay) * (p - p0))
                opt.step()
    return torch.cat(logits, dim=1)


@pytest.mark.parametrize(
    "cfg",
    [DynamicConfig(lr=0.05, rule="sgd", segment=4), DynamicConfig(lr=0.01, rule="rms", segment=5, decay=0.1)],
    ids=["sgd", "rms-decay"],
)
@pytest.mark.parametrize("family", ["transformer", "hope"])
def test_equals_krause_loop(family, cfg):
    model = MODELS[family]()
    idx = tokens(model)
    logits, state = DynamicEvaluator(model, cfg).step(idx)
    torch.testing.assert_close(logits, krause_loop(model, idx, cfg), rtol=1e-9, atol=1e-9)
    assert state.steps == -(-(T - 1) // cfg.segment)  # every segment with a target inside the call stepped
    assert not torch.allclose(logits, model(idx)[0])  # it learned


@pytest.mark.parametrize("family", FAMILIES)
def test_a_token_is_scored_before_anything_learns_from_it(family):
    """Changing token p leaves every logit before p unchanged (the prediction of p does not depend on p's
    gradient), in one call and in calls that carry the state, with large steps on small segments."""
    model = MODELS[family]()
    evaluator = DynamicEvaluator(model, DynamicConfig(lr=0.05, rule="sgd", segment=3))
    assert_causal(lambda idx: evaluator.step(idx)[0], tokens(model), 11, model.config.vocab_size)
    assert_causal(lambda idx: streamed(evaluator.step, idx, [8, 13]), tokens(model), 16, model.config.vocab_size)


@pytest.mark.parametrize("family", FAMILIES)
def test_lr_zero_is_plain_evaluation(family):
    model = MODELS[family]()
    idx = tokens(model)
    logits, state = DynamicEvaluator(model, DynamicConfig(lr=0.0, segment=4)).step(idx[:, :13])
    more, _ = DynamicEvaluator(model, DynamicConfig(lr=0.0, segment=4)).step(idx[:, 13:], state)
    plain, plain_state = model(idx[:, :13])
    plain = torch.cat([plain, model(idx[:, 13:], plain_state)[0]], dim=1)
    torch.testing.assert_close(torch.cat([logits, more], dim=1), plain, rtol=1e-10, atol=1e-10)
    assert state.delta is None and state.steps == 0


def test_repeated_text_gets_likelier():
    """A random 24-token sequence read three times in windows of 16: the Transformer's window never holds an earlier
    copy, so only learning lowers the loss of the repeats (plain evaluation stays at ~4.85 nats per token)."""
    model = MODELS["transformer"]()
    idx = tokens(model, 24).repeat(1, 3)
    evaluator = DynamicEvaluator(model, DynamicConfig(lr=1e-2, rule="rms", segment=4))
    learned, plain, state = [], [], None
    for start in range(0, idx.shape[1] - 1, 16):
        window = idx[:, start : start + 17]
        out, state = evaluator.step(window[:, :-1], state)
        learned.append(next_token_loss(out, window[:, 1:], reduction="none"))
        plain.append(next_token_loss(model(window[:, :-1])[0], window[:, 1:], reduction="none").detach())
    copies = [torch.cat(losses)[:71].split(24) for losses in (learned, plain)]
    (first, second, third), (_, _, plain_third) = [[float(c.mean()) for c in cs] for cs in copies]
    assert third < second < first and third < 0.8 * plain_third


def test_consolidate_writes_the_change_and_caps_it_per_tensor():
    model = MODELS["transformer"]()
    evaluator = DynamicEvaluator(model, DynamicConfig(lr=0.05, rule="sgd", segment=4))
    _, state = evaluator.step(tokens(model))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    probe = tokens(model, 9, seed=5)
    fresh_context = state._replace(model=None)
    with_delta = evaluator.step(probe, fresh_context)[0][:, :4]  # the first segment reads the learned weights only
    kept = evaluator.consolidate(copy.deepcopy(state))
    assert kept.delta is None and kept.steps == state.steps
    torch.testing.assert_close(model(probe)[0][:, :4], with_delta, rtol=1e-10, atol=1e-10)
    model.load_state_dict(before)
    cap = 0.01
    evaluator.consolidate(state, max_change=cap)
    capped = 0
    for n, p in model.named_parameters():
        change, raw = p.detach() - before[n], state.delta[n]
        ratio = float(change.norm() / before[n].norm())
        assert ratio <= cap * (1 + 1e-9), n
        if raw.norm() > cap * before[n].norm():  # scaled down to the cap, direction kept
            capped += 1
            assert ratio == pytest.approx(cap, rel=1e-9)
            torch.testing.assert_close(change / change.norm(), raw / raw.norm(), rtol=1e-9, atol=1e-12)
        else:
            torch.testing.assert_close(change, raw, rtol=1e-9, atol=1e-12)
    assert capped > 0


def test_one_stream_and_valid_settings():
    model = MODELS["transformer"]()
    with pytest.raises(ValueError, match="one stream at a time"):
        DynamicEvaluator(model).step(torch.zeros(2, 4, dtype=torch.long))
    for bad in (dict(lr=-1.0), dict(segment=0), dict(decay=1.0), dict(rule="adam")):
        with pytest.raises(ValueError, match="dynamic"):
            DynamicConfig(**bad)
