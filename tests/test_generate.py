"""generate(): exact against recomputing the whole sequence, each token fed once, continuation, sampling."""

import pytest
import torch

from hope.generate import generate, sample
from hope.model import HopeLM
from tests.test_model import tiny as tiny_transformer
from tests.test_titans_models import FAMILIES, V, build, tokens

ALL = [*FAMILIES, "transformer"]


def model_of(family: str) -> HopeLM:
    if family == "transformer":
        torch.manual_seed(0)
        return HopeLM(tiny_transformer(vocab_size=V)).double()
    return build(family)


def recompute(model: HopeLM, idx: torch.Tensor, n: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Greedy decoding that runs the whole sequence through the model at every step; tokens and last logits."""
    all_logits = []
    for _ in range(n):
        logits = model(idx)[0][:, -1, :V]
        all_logits.append(logits)
        idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
    return idx, all_logits


@pytest.mark.parametrize("family", ALL)
def test_greedy_generation_equals_full_recompute(family):
    """Streaming with the state gives the tokens (and logits) of recomputing the full sequence at every step;
    prompt 11 (mid-segment, mid-chunk), 12 new tokens cross a segment boundary and several chunks."""
    model, prompt = model_of(family), tokens(11)
    expected, expected_logits = recompute(model, prompt, 12)
    seen_logits = []
    handle = model.head.register_forward_hook(lambda mod, args, out: seen_logits.append(out[:, -1, :V]))
    out, state = generate(model, prompt, 12, temperature=0)
    handle.remove()
    assert torch.equal(out, expected)
    for got, ref in zip(seen_logits, expected_logits, strict=False):  # memory families: one call per new token
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    assert (state is None) == (family == "transformer")


@pytest.mark.parametrize("family", FAMILIES)
def test_each_token_is_fed_once_and_the_state_covers_all(family):
    model, prompt = model_of(family), tokens(11)
    fed = []
    handle = model.embed.register_forward_hook(lambda mod, args, out: fed.append(args[0].shape[1]))
    out, state = generate(model, prompt, 6, temperature=0)
    handle.remove()
    assert fed == [11] + [1] * 6  # the prompt once, then each new token once (the last too: the state saw it)
    logits_after, _ = model(tokens(3, seed=5), state)
    torch.testing.assert_close(
        logits_after, model(torch.cat([out, tokens(3, seed=5)], dim=1))[0][:, -3:], rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("family", ["titans-mac", "titans-mal"])
def test_continuation_and_prompts_longer_than_max_seq_len(family):
    """generate(a) then generate(b, state) == generate(a | b); a prompt over max_seq_len (64) is fed in pieces."""
    model = model_of(family)
    a, b = tokens(70), tokens(5, seed=2)
    first, state = generate(model, a, 4, temperature=0)
    second, _ = generate(model, b, 6, temperature=0, state=state)
    whole, _ = generate(model, torch.cat([first, b], dim=1), 6, temperature=0)
    assert torch.equal(second, whole[:, -11:])


def test_transformer_crops_its_context():
    model = model_of("transformer")  # max_seq_len 64
    out, state = generate(model, tokens(70), 3, temperature=0)
    assert out.shape == (2, 73) and state is None
    with pytest.raises(ValueError, match="keeps no state"):
        generate(model, tokens(3), 1, state=[None, None])


def test_sampling():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]]).repeat(2000, 1)
    assert torch.equal(sample(logits, temperature=0), torch.full((2000, 1), 1))
    assert torch.equal(sample(logits, top_k=1), torch.full((2000, 1), 1))
    top2 = sample(logits, top_k=2, generator=torch.Generator().manual_seed(0))
    assert set(top2.unique().tolist()) == {1, 3}
    share = (top2 == 1).float().mean().item()
    assert abs(share - torch.tensor([3.0, 2.0]).softmax(0)[0].item()) < 0.04
    hot = sample(logits, temperature=100.0, generator=torch.Generator().manual_seed(0))
    assert set(hot.unique().tolist()) == {0, 1, 2, 3}


def test_padded_vocabulary_is_never_sampled():
    model = model_of("titans-lmm")  # vocab 50 padded to 64
    with torch.no_grad():
        model.head.weight[V:] = 0.0
        model.head.weight[V:, 0] = 1e3  # padded entries would win every draw
    out, _ = generate(model, tokens(4), 20, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert out.max() < V


def test_generation_is_reproducible_with_a_generator():
    model = model_of("titans-mag")
    runs = [generate(model, tokens(4), 8, top_k=10, generator=torch.Generator().manual_seed(3))[0] for _ in range(2)]
    assert torch.equal(*runs)


def test_empty_prompt_is_a_clear_error():
    with pytest.raises(ValueError, match="at least one token"):
        generate(model_of("titans-lmm"), tokens(0), 3)
