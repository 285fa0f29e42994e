"""Sampling from a HopeLM.

    tokens, state = generate(model, prompt_BT, max_new_tokens=200, temperature=0.8, top_k=50)
    tokens, state = generate(model, reply_BT, max_new_tokens=200, state=state)     # continue the same stream

How the context is carried depends on the family.

**Memory families (Titans)** carry their recurrent state, so every token goes through the model exactly once.
- The prompt is fed first, in pieces of at most ``max_seq_len`` tokens.
- Then each sampled token is fed on its own.

Streaming through the state is exact (``tests/test_titans_models.py``), so the tokens are those of recomputing
the whole sequence at every step (``tests/test_generate.py``). The cost per token stays constant however long the
stream runs: the memory is fixed-size, and attention reaches only a window or a segment.

**Learning while generating (HOPE).** Pass ``learner=TestTimeLearner(model, ...)`` and every token goes through
``learner.step`` instead of the plain forward: the CMS levels learn from the prompt (and later turns) in context,
and the fast weights travel in the returned state (``hope.ttl``; ``learner.consolidate(state)`` keeps them). With
the "teach" objective a token fed on its own teaches nothing (its target is not known yet), so generated tokens
only advance the levels' clocks; the "reconstruction" objective learns from them too. Hope-Attention then streams
through its KV cache as well, up to ``max_seq_len`` tokens.

**Transformer++** has no KV cache yet. Each step recomputes the logits over the last ``max_seq_len`` tokens, as
nanoGPT does, which costs O(context) per token, and ``state`` stays None. To continue, call again with the whole
sequence.
"""

from __future__ import annotations

from collections.abc import Generator

import torch

from hope.model import HopeLM
from hope.ttl import TestTimeLearner

__all__ = ["generate", "generate_stream", "nucleus", "sample"]


def nucleus(logits_BV: torch.Tensor, top_p: float, temperature: float) -> torch.Tensor:
    """Logits with every token outside the nucleus at -inf: the most likely tokens whose probability at
    ``temperature`` sums to at least ``top_p`` (Holtzman et al. 2020; the most likely token always stays)."""
    if temperature == 0 or top_p >= 1:
        return logits_BV
    probs_BV = torch.softmax(logits_BV.float() / temperature, dim=-1)
    sorted_BV, order_BV = probs_BV.sort(dim=-1, descending=True)
    before_BV = sorted_BV.cumsum(dim=-1) - sorted_BV  # probability of the more likely tokens
    drop_BV = torch.zeros_like(probs_BV, dtype=torch.bool).scatter(-1, order_BV, before_BV >= top_p)
    return logits_BV.masked_fill(drop_BV, float("-inf"))


def sample(
    logits_BV: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """Next tokens [B, 1] from last-position logits [B, V]: greedy when temperature is 0, else softmax sampling
    at that temperature over the nucleus ``top_p`` of the full distribution (all tokens if None), then over the
    top_k most likely of those (all if None)."""
    if top_p is not None:
        logits_BV = nucleus(logits_BV, top_p, temperature)
    if temperature == 0:
        return logits_BV.argmax(dim=-1, keepdim=True)
    logits_BV = logits_BV.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits_BV, min(top_k, logits_BV.shape[-1])).values[:, -1:]
        logits_BV = logits_BV.masked_fill(logits_BV < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits_BV, dim=-1), 1, generator=generator)


def _feed(forward, idx_BT: torch.Tensor, state: list | None, max_len: int) -> tuple[torch.Tensor, list]:
    """Stream idx through forward(idx, state) in pieces of at most max_len; logits of the last piece, final state."""
    for start in range(0, idx_BT.shape[1], max_len):
        logits, state = forward(idx_BT[:, start : start + max_len], state)
    return logits, state


@torch.no_grad()
def generate_stream(
    model: HopeLM,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    state: list | None = None,
    generator: torch.Generator | None = None,
    learner: TestTimeLearner | None = None,
    top_p: float | None = None,
) -> Generator[torch.Tensor, None, list | None]:
    """``generate`` one token at a time: yields each new token [B, 1] as soon as it is drawn (a caller may stop
    early, e.g. at EOS) and returns the final state as the generator's value."""
    if idx.shape[1] < 1:
        raise ValueError("generate needs at least one token in idx (e.g. BOS) to condition on.")
    vocab = model.config.vocab_size
    if learner is not None and learner.model is not model:
        raise ValueError("learner was built for another model; pass TestTimeLearner(model) of this model.")
    forward = model if learner is None else learner.step
    total = idx.shape[1] + max_new_tokens
    if learner is not None and not model.carries_state and total > model.config.max_seq_len:
        raise ValueError(
            f"model.family={model.config.family!r} streams (and so learns in context) up to model.max_seq_len="
            f"{model.config.max_seq_len} tokens, but the prompt and max_new_tokens make {total}. Shorten one of them."
        )
    if not model.carries_state and learner is None:
        if state is not None:
            raise ValueError(f"model.family={model.config.family!r} keeps no state; pass the whole sequence as idx.")
        context = idx
        for _ in range(max_new_tokens):
            logits, _ = model(context[:, -model.config.max_seq_len :])
            token = sample(logits[:, -1, :vocab], temperature, top_k, generator, top_p)
            yield token
            context = torch.cat([context, token], dim=1)
        return None
    logits, state = _feed(forward, idx, state, model.config.max_seq_len)
    for _ in range(max_new_tokens):
        token = sample(logits[:, -1, :vocab], temperature, top_k, generator, top_p)
        yield token
        logits, state = forward(token, state)  # the last one too, so that the state has seen every token
    return state


def generate(model: HopeLM, idx: torch.Tensor, max_new_tokens: int, **sampling) -> tuple[torch.Tensor, list | None]:
    """Sample ``max_new_tokens`` tokens after ``idx`` [B, T >= 1]; ``sampling`` takes ``generate_stream``'s keyword
    arguments (``temperature``, ``top_k``, ``top_p``, ``state``, ``generator``, ``learner``).

    For memory families, ``state`` is what an earlier call returned, and ``idx`` holds the tokens that come after
    those the state has seen. Returns ``idx`` followed by the new tokens [B, T + max_new_tokens], and the state
    after all of them, or None for Transformer++ (see the module docstring). Logits of the padded vocabulary
    entries are never sampled. ``learner`` (a ``hope.ttl.TestTimeLearner`` of this model) makes the CMS levels
    learn from the stream as it is read (see the module docstring).
    """
    stream = generate_stream(model, idx, max_new_tokens, **sampling)
    tokens = [idx]
    while True:
        try:
            tokens.append(next(stream))
        except StopIteration as done:
            return torch.cat(tokens, dim=1), done.value
