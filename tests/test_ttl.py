"""Test-time learning of the CMS levels (hope.ttl): equals a naive per-chunk loop; discard, consolidate, lr 0."""

import pytest
import torch
from torch.func import functional_call

from hope.config import ModelConfig
from hope.loss import next_token_loss
from hope.model import HopeLM
from hope.ttl import TestTimeLearner

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
        {"hidden": 24, "tokens_per_update": 8, "steps_per_update": 2},
    ],
)


def small_model(family: str) -> HopeLM:
    torch.manual_seed(0)
    return HopeLM(ModelConfig(family=family, **SMALL)).double()


def level_weight_names(model: HopeLM) -> list[list[str]]:
    """[(block, level)] -> names of (gate, up, down) in the model's parameter dict."""
    return [
        [f"blocks.{b}.cms.levels.{lv}.mlp.{m}.weight" for m in ("gate", "up", "down")]
        for b in range(len(model.blocks))
        for lv in range(len(model.blocks[b].cms.levels))
    ]


def naive_loop(model: HopeLM, idx_1T: torch.Tensor, lr: float):
    """Eq. 31 written out: fixed chunks of the fastest period; each level's weights step every C^(l) tokens on
    the gradient of the chunk's next-token loss summed since its last step, taken directly w.r.t. the weights."""
    params = dict(model.named_parameters())
    names = level_weight_names(model)
    periods = model.blocks[0].cms.periods * len(model.blocks)
    delta = {n: torch.zeros_like(params[n]) for ns in names for n in ns}
    sums = {n: torch.zeros_like(params[n]) for ns in names for n in ns}
    state, logits = None, []
    C = min(periods)
    for start in range(0, idx_1T.shape[1], C):
        chunk = idx_1T[:, start : start + C]
        fast = {n: (params[n] + delta[n]).detach().requires_grad_() for n in delta}
        out, state = functional_call(model, {**params, **fast}, (chunk, state))
        loss = next_token_loss(out[:, :-1], chunk[:, 1:], reduction="sum")
        grads = torch.autograd.grad(loss, list(fast.values()))
        for n, g in zip(fast, grads, strict=True):
            sums[n] += g
        for ns, period in zip(names, periods, strict=True):
            if (start + C) % period == 0:
                for n in ns:
                    delta[n] -= lr * sums[n]
                    sums[n].zero_()
        state = [s.detach() for s in state]
        logits.append(out.detach())
    return torch.cat(logits, dim=1), delta


@pytest.mark.parametrize("family", FAMILIES)
def test_in_context_update_equals_naive_loop(family):
    model = small_model(family)
    idx = torch.randint(0, 64, (1, 24))
    learner = TestTimeLearner(model, inner_lr=0.05)
    # calls split at a multiple of the fastest period (an unaligned split drops the pair that straddles it;
    # hope/ttl.py); the 16-token second call is cut into pieces by the learner itself
    first, state = learner.step(idx[:, :8])
    second, state = learner.step(idx[:, 8:], state)
    ref_logits, ref_delta = naive_loop(model, idx, 0.05)
    torch.testing.assert_close(torch.cat([first, second], dim=1), ref_logits, rtol=1e-9, atol=1e-9)
    names = level_weight_names(model)
    L = len(model.blocks[0].cms.levels)
    for i, ns in enumerate(names):
        got = state[i // L].cms.delta[i % L]
        for n, d in zip(ns, got, strict=True):
            torch.testing.assert_close(d[0], ref_delta[n], rtol=1e-9, atol=1e-12)
    assert any(d.abs().max() > 0 for d in ref_delta.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_consolidate_then_fresh_forward_equals_fast_state(family):
    model = small_model(family)
    idx, probe = torch.randint(0, 64, (1, 16)), torch.randint(0, 64, (1, 12))
    learner = TestTimeLearner(model, inner_lr=0.05)
    _, state = learner.step(idx)
    with_fast = model(probe, [s._replace(mixer=None) for s in state])[0]  # fast weights, fresh context
    before = model(probe)[0]
    learner.consolidate(state)
    after = model(probe)[0]
    torch.testing.assert_close(after, with_fast, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(after, before)


def test_discard_leaves_weights_unchanged_and_forgets():
    model = small_model("hope")
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    learner = TestTimeLearner(model, inner_lr=0.05)
    idx, more = torch.randint(0, 64, (1, 16)), torch.randint(0, 64, (1, 8))
    _, state = learner.step(idx)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), weights[n], rtol=0, atol=0)
        assert p.grad is None, f"{n}: test-time learning must not touch .grad"
    forgot = learner.discard(state)
    torch.testing.assert_close(model(more, forgot)[0], model(more, [s._replace(cms=None) for s in state])[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_inner_lr_zero_changes_nothing(family):
    model = small_model(family)
    idx = torch.randint(0, 64, (2, 20))
    logits, state = TestTimeLearner(model, inner_lr=0.0).step(idx)
    torch.testing.assert_close(logits, model(idx)[0], rtol=1e-10, atol=1e-10)
    assert all(d is None or all(t.abs().max() == 0 for t in d) for s in state for d in s.cms.delta)


@pytest.mark.parametrize("family", FAMILIES)
def test_frozen_weights_learn_the_same_and_hooks_are_removed(family):
    """The learner's graph starts at the embedding's output, so frozen weights learn in context alike; its hooks
    on the model's forward are gone after a step, also after one that failed."""
    model = small_model(family)
    idx = torch.randint(0, 64, (1, 12))
    learner = TestTimeLearner(model, inner_lr=0.05)
    logits, state = learner.step(idx)
    model.requires_grad_(False)
    frozen_logits, frozen_state = learner.step(idx)
    torch.testing.assert_close(frozen_logits, logits, rtol=0, atol=0)
    for s, f in zip(state, frozen_state, strict=True):
        for d, d_frozen in zip(s.cms.delta, f.cms.delta, strict=True):
            assert d is not None and all(torch.equal(a, b) for a, b in zip(d, d_frozen, strict=True))
    assert not any(module._forward_hooks for module in model.modules())
    with pytest.raises(IndexError):
        learner.step(torch.full((1, 4), 10**6))  # a token outside the vocabulary fails inside the forward
    assert not any(module._forward_hooks for module in model.modules())


def test_rejects_models_without_cms():
    with pytest.raises(ValueError, match="has no CMS levels"):
        TestTimeLearner(HopeLM(ModelConfig(n_layer=1, n_embd=32, n_head=2)))


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_with_a_learner_learns_from_the_prompt(family):
    """generate(learner=...) == learner.step on the prompt then on each greedy token; the prompt moves the fast
    weights, so the continuation differs from plain generation's, and with inner lr 0 it is plain generation."""
    from hope.generate import generate

    model, prompt = small_model(family), torch.randint(0, 64, (2, 21), generator=torch.Generator().manual_seed(3))
    learner = TestTimeLearner(model, inner_lr=0.5)
    out, state = generate(model, prompt, 6, temperature=0, learner=learner)

    logits, expected_state = learner.step(prompt)
    tokens = [prompt]
    for _ in range(6):
        tokens.append(logits[:, -1, :64].argmax(-1, keepdim=True))
        logits, expected_state = learner.step(tokens[-1], expected_state)
    assert torch.equal(out, torch.cat(tokens, dim=1))
    for a, b in zip(state, expected_state, strict=True):
        assert a.cms.position == b.cms.position == 27
        for x, y in zip(a.cms.delta, b.cms.delta, strict=True):
            assert x is not None  # both levels (periods 4 and 8) have stepped on the prompt
            for u, w in zip(x, y, strict=True):
                torch.testing.assert_close(u, w, rtol=0, atol=0)

    plain_logits = model(out[:, :-1])[0]
    learned_logits = learner.step(out[:, :-1])[0]
    assert not torch.allclose(plain_logits, learned_logits)
    frozen, _ = generate(model, prompt, 6, temperature=0, learner=TestTimeLearner(model, inner_lr=0.0))
    plain, _ = generate(model, prompt, 6, temperature=0)
    assert torch.equal(frozen, plain)


def test_generate_with_a_learner_past_max_seq_len_is_a_clear_error():
    from hope.generate import generate

    model = small_model("hope-attention")
    with pytest.raises(ValueError, match="max_seq_len=128"):
        generate(model, torch.zeros(1, 100, dtype=torch.long), 40, learner=TestTimeLearner(model))
