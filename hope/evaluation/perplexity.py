"""Perplexity of a checkpoint on documents, under two protocols, with perplexity by position for long context.

- ``strided`` (Hugging Face's fixed-length-model guide): the documents are packed into one stream exactly as
  training packs them (``[bos] doc [eos] [bos] doc [eos] ...``) and scored with a strided sliding window
  (``window`` tokens, the guide's ``max_length``, every ``stride``; context targets masked). Every stream token
  after the first is a target, the ``eos``/``bos`` between documents included, like ``hope fit``'s ``val_ppl``
  (which is this protocol with ``window = data.seq_len + 1`` and ``stride = data.seq_len``).
- ``rolling`` (lm-evaluation-harness ``loglikelihood_rolling``): each document is scored on its own as
  ``[bos] + tokens`` (only the text tokens are targets, as in lm-eval), in disjoint windows of ``window``
  predictions, the last right-aligned for maximal context.

``state``: ``reset`` starts every window from a fresh state; ``carry`` hands the model's recurrent state from
window to window and document to document (every token read once, in order; see ``hope.evaluation.scoring``);
``document`` (rolling only) carries it within a document and resets it at each new one. A Transformer++ has no
state, so the three agree for it up to float rounding.

Learning while reading (``hope.online``): with ``ttl`` (HOPE's CMS levels learn in context) or ``dynamic`` (dynamic
evaluation: every weight steps on each scored segment), every token is scored before anything learns from it, and
what was learned is part of the state, so ``state`` also says how long it lasts: one window (``reset``), one
document (``document``) or the whole stream (``carry``). ``ttl.consolidate`` (rolling, ``document`` or ``carry``)
writes the fast weights into the model at the end of every document, capped by ``ttl.max_change``, so what a
document taught outlives it. The model is restored when the evaluation ends.

Reported: token perplexity (over the scored tokens), bits per byte, byte and word perplexity (over the UTF-8
bytes and lm-eval words of the documents' text; see ``hope.evaluation.metrics``), and perplexity by the target's
position in its document (the number of document tokens before it), in buckets of ``bucket_size`` tokens.
Spread: the standard error of the mean NLL per token by batch means over consecutive ``se_batch_tokens``-token
batches of the scored stream, in scoring order, and the token perplexity's 95 % interval from it (see
``hope.evaluation.metrics``; null with fewer than two batches); the batch means themselves, so that two reports on
the same text compare paired (``metrics.paired_log_ratio``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from hope.dynamic import DynamicConfig
from hope.evaluation import metrics
from hope.evaluation.scoring import Window, rolling_windows, score_windows, strided_windows
from hope.online import TTLConfig, learning, learning_settings
from hope.tokenizer import Tokenizer

PROTOCOLS = ("strided", "rolling")
STATES = ("reset", "carry", "document")


class Totals:
    """Running sums of log-likelihood per token, per position bucket, and the text's bytes and words; the scored
    tokens' log-probs in scoring order, for the standard error."""

    def __init__(self, bucket_size: int, se_batch_tokens: int = 128) -> None:
        self.bucket_size, self.se_batch_tokens = bucket_size, se_batch_tokens
        self.logprobs: list[np.ndarray] = []
        self.loglikelihood, self.tokens, self.bytes, self.words, self.documents = 0.0, 0, 0, 0, 0
        self.bucket_ll = np.zeros(0)
        self.bucket_n = np.zeros(0, dtype=np.int64)

    def add_text(self, text: str) -> None:
        """Count one document and its UTF-8 bytes and lm-eval words."""
        self.documents += 1
        self.bytes += metrics.count_bytes(text)
        self.words += metrics.count_words(text)

    def add_scores(self, logprobs: torch.Tensor, positions: np.ndarray) -> None:
        """Add scored tokens' log-probs [N] to the totals and to the buckets of their document positions [N]."""
        lp = logprobs.numpy()
        self.logprobs.append(lp)
        self.loglikelihood += float(lp.sum())
        self.tokens += len(lp)
        buckets = positions // self.bucket_size
        n = int(buckets.max()) + 1 if len(buckets) else 0
        if n > len(self.bucket_ll):
            self.bucket_ll = np.pad(self.bucket_ll, (0, n - len(self.bucket_ll)))
            self.bucket_n = np.pad(self.bucket_n, (0, n - len(self.bucket_n)))
        np.add.at(self.bucket_ll, buckets, lp)
        np.add.at(self.bucket_n, buckets, 1)

    def report(self) -> dict:
        """Totals and metrics: token/byte/word perplexity, bits per byte, and perplexity by position bucket."""
        ll = self.loglikelihood
        if self.tokens == 0:
            raise ValueError("no tokens were scored: the documents are empty after tokenization")
        buckets = [
            {
                "start": i * self.bucket_size,
                "end": (i + 1) * self.bucket_size,
                "tokens": int(n),
                "nll": -float(s) / int(n),
                "perplexity": math.exp(-float(s) / int(n)),
            }
            for i, (s, n) in enumerate(zip(self.bucket_ll, self.bucket_n, strict=True))
            if n > 0
        ]
        nll = -ll / self.tokens
        nll_batches = metrics.batch_means(-np.concatenate(self.logprobs), self.se_batch_tokens)
        nll_se = metrics.mean_standard_error(nll_batches)
        return {
            "documents": self.documents,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "words": self.words,
            "loglikelihood": ll,
            "nll_per_token": nll,
            "nll_standard_error": nll_se,
            "se_batch_tokens": self.se_batch_tokens,
            "nll_batch_means": [round(float(x), 6) for x in nll_batches],  # for paired comparisons on this text
            "token_perplexity": metrics.token_perplexity(ll, self.tokens),
            "token_perplexity_interval95": metrics.perplexity_interval(nll, nll_se),
            "bits_per_byte": metrics.bits_per_byte(ll, self.bytes),
            "byte_perplexity": metrics.byte_perplexity(ll, self.bytes),
            "word_perplexity": metrics.word_perplexity(ll, self.words),
            "by_position": {"bucket_size": self.bucket_size, "buckets": buckets},
        }


def pack_with_positions(docs: Sequence[list[int]], bos: int | None, eos: int | None) -> tuple[list[int], np.ndarray]:
    """The training-style stream ``[bos] doc [eos] ...`` and each token's position as a *target*: ``bos`` 0, the
    i-th document token i, ``eos`` len(doc) (the number of document tokens before it)."""
    stream, positions = [], []
    for doc in docs:
        head, tail = ([bos] if bos is not None else []), ([eos] if eos is not None else [])
        stream += head + doc + tail
        positions += [0] * len(head) + list(range(len(doc))) + [len(doc)] * len(tail)
    return stream, np.asarray(positions, dtype=np.int64)


@torch.no_grad()
def evaluate_perplexity(
    model: nn.Module,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    protocol: str = "rolling",
    window: int | None = None,
    stride: int | None = None,
    state: str = "reset",
    bucket_size: int = 256,
    progress: bool = True,
    ttl: TTLConfig | None = None,
    dynamic: DynamicConfig | None = None,
    se_batch_tokens: int = 128,
) -> dict:
    """Score ``texts`` with ``model``, learning while it reads with ``ttl`` or ``dynamic``; returns the report dict
    (see the module docstring)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r}: choose one of {PROTOCOLS}")
    if state not in STATES:
        raise ValueError(f"state={state!r}: choose one of {STATES}")
    if state == "document" and protocol == "strided":
        raise ValueError("state='document' needs protocol='rolling' (the strided stream has no document windows)")
    window = window or model.config.max_seq_len
    if window > model.config.max_seq_len:
        raise ValueError(f"window={window} exceeds the model's max_seq_len={model.config.max_seq_len}")
    stride = stride or max(window // 2, 1)
    if protocol == "strided" and not 1 <= stride < window:
        raise ValueError(f"stride={stride} must be in 1..window-1={window - 1} (window={window})")
    if bucket_size < 1:
        raise ValueError(f"bucket_size={bucket_size} must be >= 1")
    if se_batch_tokens < 1:
        raise ValueError(f"se_batch_tokens={se_batch_tokens} must be >= 1 (tokens per batch of the standard error)")
    consolidate = ttl is not None and ttl.consolidate
    if consolidate and (protocol != "rolling" or state == "reset"):
        raise ValueError(
            f"ttl.consolidate happens at each document's end: it needs protocol='rolling' and state 'document' or "
            f"'carry' (got protocol={protocol!r}, state={state!r})"
        )
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    totals = Totals(bucket_size, se_batch_tokens)
    token_lists = tokenizer.encode_batch(list(texts), bos=False)
    for text in texts:
        totals.add_text(text)
    with learning(model, ttl, dynamic) as reader:
        if protocol == "strided":
            _strided(reader, tokenizer, token_lists, window, stride, state, totals, progress)
        else:
            _rolling(reader, tokenizer, token_lists, window, state, totals, progress, consolidate, ttl)
    model.train(was_training)
    settings = {
        "protocol": protocol,
        "window": window,
        "stride": stride if protocol == "strided" else None,
        "state": state,
        **learning_settings(ttl, dynamic),
    }
    return {**settings, **totals.report(), "seconds": round(time.perf_counter() - started, 3)}


def _progress(total: int, enabled: bool) -> tqdm:
    return tqdm(total=total, unit="tok", desc="perplexity", disable=not enabled, dynamic_ncols=True)


def _strided(model, tokenizer, token_lists, window, stride, state, totals, progress) -> None:
    stream, positions = pack_with_positions(token_lists, tokenizer.bos_id, tokenizer.eos_id)
    windows = strided_windows(len(stream), window, stride)
    with _progress(len(stream) - 1, progress) as bar:
        scored = score_windows(model, stream, windows, carry=state == "carry", on_window=lambda w: bar.update(w.n_new))
    totals.add_scores(scored.logprobs, positions[1:])


def _rolling(model, tokenizer, token_lists, window, state, totals, progress, consolidate=False, ttl=None) -> None:
    prefix = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    if prefix is None:
        raise ValueError("the rolling protocol needs a BOS or EOS id to predict each document's first token")
    carried = None
    with _progress(sum(len(t) for t in token_lists), progress) as bar:
        for tokens in token_lists:
            seq = [prefix] + tokens
            windows: list[Window] = rolling_windows(len(seq), window)
            scored = score_windows(
                model,
                seq,
                windows,
                state=carried if state == "carry" else None,
                carry=state != "reset",
                on_window=lambda w: bar.update(w.n_new),
            )
            carried = model.consolidate(scored.state, ttl.max_change) if consolidate else scored.state
            totals.add_scores(scored.logprobs, np.arange(len(tokens)))
