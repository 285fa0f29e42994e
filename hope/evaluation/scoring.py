"""Per-token log-probabilities of a HopeLM over sequences longer than its context, window by window.

A sequence ``s`` of N tokens has N-1 targets: ``s[k]`` is predicted from ``s[:k]``. A ``Window(begin, end, n_new)``
feeds ``s[begin:end]`` to the model and scores the last ``n_new`` of its targets ``s[begin+1:end+1]``; the
earlier positions of the window are context only (the HF guide's ``-100`` labels). Two plans:

- ``strided_windows`` (Hugging Face "perplexity of fixed-length models"): windows of ``window`` tokens (the
  guide's ``max_length``) every ``stride`` tokens; each target is scored once, with at least
  ``window - stride - 1`` tokens of context after the first window. The last window is whatever is left.
- ``rolling_windows`` (lm-evaluation-harness ``loglikelihood_rolling`` with ``context_len=1``): disjoint windows
  of ``window`` predictions; the last one is right-aligned so its targets get the maximal context.

Recurrent state (``logits, state = model(idx, state)``). With ``carry=True`` the model reads every token exactly
once, in order: window k starts from the state after ``s[:begin_k]``. When windows overlap, that state is
obtained by an extra pass over ``s[begin_k:begin_{k+1}]`` from window k's starting state. With ``carry=False``
each window starts from ``state`` as given (``None``: fresh). Models that carry no state past a window
(Transformer++, Hope-Attention: ``is_stateful``) skip the extra passes and read every window afresh.

A model that learns while it reads (``hope.online``: test-time learning, dynamic evaluation) is read the same way:
what it learned is part of its state, so with ``carry=True`` window k starts from what was learned from exactly
``s[:begin_k]`` (an overlap is re-read from window k's starting state, never learned twice) and, with
``carry=False``, every window learns from scratch.

Logits are over the padded vocabulary; the padded ids can never be targets, so they are sliced off before the
softmax (``model.config.vocab_size``): an untrained head then spreads probability over real tokens only, and a
model with uniform logits has perplexity exactly ``vocab_size``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hope.online import OnlineLM


@dataclass(frozen=True)
class Window:
    """Feed ``s[begin:end]``; score its last ``n_new`` targets (``s[end-n_new+1 : end+1]``)."""

    begin: int
    end: int
    n_new: int


@dataclass
class Scored:
    """Per-target results for a whole sequence (index k is the target ``s[k+1]``)."""

    logprobs: torch.Tensor
    """float64 [N-1]: log p(s[k+1] | context)."""
    greedy: torch.Tensor
    """bool [N-1]: whether s[k+1] was the argmax prediction (greedy decoding would have produced it)."""
    state: list | None
    """The state after the whole sequence (carry=True), for carrying into the next sequence."""


def strided_windows(n_tokens: int, window: int, stride: int) -> list[Window]:
    """Hugging Face's strided sliding window over ``n_tokens`` tokens (``n_tokens - 1`` targets).

    ``window`` is the guide's ``max_length``: the tokens of ``encodings[begin:begin + window]``, the last of which
    is only a label. The model is therefore fed ``window - 1`` tokens per window and every number matches the
    guide's loop exactly (``tests/test_eval_perplexity.py`` runs that loop).
    """
    if window < 2 or not 1 <= stride < window:
        raise ValueError(f"need window >= 2 and 1 <= stride < window, got window={window}, stride={stride}")
    n_targets, windows, prev_end = n_tokens - 1, [], 0
    for begin in range(0, max(n_targets, 0), stride):
        end = min(begin + window - 1, n_targets)
        windows.append(Window(begin, end, end - prev_end))
        prev_end = end
        if end == n_targets:
            break
    return windows


def rolling_windows(n_tokens: int, window: int) -> list[Window]:
    """lm-eval's rolling windows: disjoint predictions, the last window right-aligned for maximal context."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    n_targets = n_tokens - 1
    if n_targets < 1:
        return []
    done = min(window, n_targets)
    windows = [Window(0, done, done)]
    while done < n_targets:
        n_new = min(n_targets - done, window)
        windows.append(Window(done + n_new - window, done + n_new, n_new))
        done += n_new
    return windows


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's (first) parameters."""
    return next(model.parameters()).device


def real_vocab_logits(model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """Logits over the tokenizer's ids only: the padded tail of the vocabulary is dropped (never a target)."""
    return logits[..., : model.config.vocab_size]


def is_stateless(state: list | None) -> bool:
    """Whether ``state`` carries nothing: None, or a list of only None (e.g. a Transformer++'s per-block state)."""
    return state is None or all(s is None for s in state)


_STATEFUL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@torch.no_grad()
def is_stateful(model: nn.Module) -> bool:
    """Whether the model returns a recurrent state that carries a stream past its window (probed once with a
    one-token input, then cached). A model whose blocks carry none (``carries_state`` False: Transformer++, and
    Hope-Attention, whose KV cache ends at ``max_seq_len``) is read window by window, each window afresh."""
    if not getattr(model, "carries_state", True):
        return False
    if model not in _STATEFUL:
        _, state = model(torch.zeros(1, 1, dtype=torch.long, device=model_device(model)))
        _STATEFUL[model] = not is_stateless(state)
    return _STATEFUL[model]


def read_context(model: nn.Module, tokens: Sequence[int], keep: int, state: list | None) -> tuple[list[int], list]:
    """Split a context that may not fit: the last ``keep`` tokens stay as tokens (for the attention window), the
    ones before are read into ``state`` by a stateful model (a stateless one cannot see them; they are dropped)."""
    tokens = list(tokens)
    cut = max(len(tokens) - keep, 0)
    if cut and is_stateful(model):
        state = advance_state(
            model, torch.tensor(tokens[:cut], device=model_device(model)), state, model.config.max_seq_len
        )
    return tokens[cut:], state


@torch.no_grad()
def forward_logprobs(
    model: nn.Module, idx_BT: torch.Tensor, targets_BT: torch.Tensor, state: list | None = None
) -> tuple[torch.Tensor, torch.Tensor, list | None]:
    """``(log p(targets) [B, T] float64, targets == argmax [B, T], new state)`` for one forward pass."""
    logits, state = model(idx_BT, state)
    logp = torch.log_softmax(real_vocab_logits(model, logits).float(), dim=-1)
    picked = logp.gather(-1, targets_BT.unsqueeze(-1)).squeeze(-1)
    return picked.double(), logp.argmax(-1) == targets_BT, state


@torch.no_grad()
def advance_state(model: nn.Module, tokens: torch.Tensor, state: list | None, window: int) -> list | None:
    """The state after reading ``tokens`` (1-D) from ``state``, in chunks of at most ``window`` tokens."""
    for start in range(0, len(tokens), window):
        _, state = model(tokens[start : start + window].unsqueeze(0), state)
    return state


@torch.no_grad()
def score_windows(
    model: nn.Module,
    tokens: torch.Tensor | Sequence[int],
    windows: Sequence[Window],
    state: list | None = None,
    carry: bool = True,
    on_window: Callable[[Window], None] | None = None,
) -> Scored:
    """Score every target of ``tokens`` covered by ``windows`` (see the module docstring for the state rules).

    ``on_window`` is called after each window (progress bars).
    """
    s = torch.as_tensor(tokens, dtype=torch.long, device=model_device(model))
    n_targets = max(len(s) - 1, 0)
    logprobs = torch.zeros(n_targets, dtype=torch.float64, device=s.device)
    greedy = torch.zeros(n_targets, dtype=torch.bool, device=s.device)
    start_state, stateless = state, not is_stateful(model)
    for k, w in enumerate(windows):
        lp, hit, end_state = forward_logprobs(
            model, s[None, w.begin : w.end], s[None, w.begin + 1 : w.end + 1], start_state if carry else state
        )
        logprobs[w.end - w.n_new : w.end] = lp[0, -w.n_new :]
        greedy[w.end - w.n_new : w.end] = hit[0, -w.n_new :]
        if on_window is not None:
            on_window(w)
        if not carry or stateless:
            continue
        # The next window must start from the state after s[:next_begin]; after the last one, after all of s.
        next_begin = windows[k + 1].begin if k + 1 < len(windows) else len(s)
        chunk = max(w.end - w.begin, 1)
        if next_begin >= w.end:
            start_state = advance_state(model, s[w.end : next_begin], end_state, chunk)
        elif next_begin > w.begin:  # overlapping windows: re-read only what the next window does not start with
            start_state = advance_state(model, s[w.begin : next_begin], start_state, chunk)
    if not carry or stateless:
        final = None
    elif windows:
        final = start_state
    else:  # nothing to score (a 1-token sequence): still read it
        final = advance_state(model, s, state, model.config.max_seq_len)
    return Scored(logprobs.cpu(), greedy.cpu(), final)


@torch.no_grad()
def continuation_token_scores(
    model: nn.Module,
    context: Sequence[int],
    continuations: Sequence[Sequence[int]],
    state: list | None = None,
    window: int | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-token ``(log-probabilities, greedy flags)`` of each continuation of one context.

    The continuation plus as much of the context as fits go into one final window of at most ``window``
    tokens (default: the model's ``max_seq_len``); the context before that window is read into the state first
    (for stateful models; a Transformer++ simply does not see it). Continuations are scored in one batch when
    the state is stateless, one by one otherwise (a state cannot be broadcast without knowing its layout), and
    always one by one when the model learns while it reads (``hope.online.OnlineLM``): each continuation is then
    read from the same context, and learning from one cannot reach another's scores.
    """
    window = window or model.config.max_seq_len
    context = list(context)
    longest = max(len(c) for c in continuations)
    if not context:
        raise ValueError("the context must have at least one token (e.g. BOS) to predict the first continuation token")
    if not 1 <= longest <= window:
        raise ValueError(f"continuations must have 1..{window} tokens, got {longest}")
    # Context tokens in the final window (its input is context tail + continuation[:-1]); the rest go to the state.
    tail, state = read_context(model, context, window + 1 - longest, state)
    rows = [tail + list(c) for c in continuations]
    if is_stateless(state) and not isinstance(model, OnlineLM):
        return _batched_continuations(model, rows, [len(c) for c in continuations])
    results = []
    for row, c in zip(rows, continuations, strict=True):
        results.extend(_batched_continuations(model, [row], [len(c)], state))
    return results


def _batched_continuations(model, rows: list[list[int]], lengths: list[int], state=None):
    """Right-padded batch of ``context + continuation`` rows; per-token scores of the last ``lengths[i]`` tokens."""
    device = model_device(model)
    width = max(len(r) for r in rows)
    batch = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        batch[i, : len(r)] = torch.tensor(r, device=device)
    lp, hit, _ = forward_logprobs(model, batch[:, :-1], batch[:, 1:], state)
    out = []
    for i, (r, n) in enumerate(zip(rows, lengths, strict=True)):
        stop = len(r) - 1  # right padding comes after every scored position, so causality keeps it harmless
        out.append((lp[i, stop - n : stop].cpu(), hit[i, stop - n : stop].cpu()))
    return out


def summed(token_scores: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[float, bool]]:
    """``(sum log p(continuation | context), every token greedy)`` per continuation (lm-eval's ``loglikelihood``
    answer) from ``continuation_token_scores``."""
    return [(float(lp.sum()), bool(hit.all())) for lp, hit in token_scores]
