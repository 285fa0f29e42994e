"""Token blocks for what methods read besides the training stream: a task's texts (retention harness), and bounded
samples of a data source (EWC's Fisher data, SMF's background set, replay's general data).

Blocks are ``(inputs, labels)`` [n, seq_len] next-token pairs of a ``[bos] text [eos] ...`` stream, as in
pretraining; labels past the end of the stream are -100 (not scored).
"""

from __future__ import annotations

import math
import random

import torch

from hope.data.documents import load_documents
from hope.tokenizer import Tokenizer


def pack_blocks(stream: list[int], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)`` [n, seq_len]: ``stream`` cut into next-token blocks; labels past its end are -100."""
    n = max(1, math.ceil((len(stream) - 1) / seq_len))
    tokens = torch.zeros(n * seq_len + 1, dtype=torch.long)
    tokens[: len(stream)] = torch.tensor(stream, dtype=torch.long)
    labels = tokens[1:].clone()
    labels[max(len(stream) - 1, 0) :] = -100
    return tokens[:-1].view(n, seq_len), labels.view(n, seq_len)


def text_blocks(
    texts: list[str],
    tokenizer: Tokenizer,
    seq_len: int,
    seed: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``texts`` packed as ``[bos] text [eos] ...`` (in an order shuffled by ``seed``, if given) into blocks."""
    encoded = tokenizer.encode_batch(texts, bos=True, eos=True)
    order = list(range(len(encoded)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    return pack_blocks([t for i in order for t in encoded[i]], seq_len)


def source_blocks(
    source: str, tokenizer: Tokenizer, seq_len: int, n_blocks: int, split: str = "train", max_documents: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n_blocks`` blocks of (at most ``max_documents`` documents of) a data source's ``split``.

    ``source`` is any ``data.source`` spec (``default``, a file or folder, a hub dataset). The default corpus's
    ``train`` split excludes the files ``hope fit`` validates on.
    """
    stream: list[int] = []
    for _, text in load_documents(source, split, max_documents=max_documents):
        stream += tokenizer.encode(text, bos=True, eos=True)
        if len(stream) > n_blocks * seq_len:
            break
    inputs, labels = pack_blocks(stream, seq_len)
    if len(inputs) < n_blocks:
        raise ValueError(
            f"{source!r} ({split} split, {max_documents} documents) holds {len(inputs)} blocks of "
            f"{seq_len} tokens, fewer than the {n_blocks} asked for; lower the number of blocks."
        )
    return inputs[:n_blocks], labels[:n_blocks]


def batches(inputs: torch.Tensor, labels: torch.Tensor, batch_size: int):
    """``{"input_ids", "labels"}`` batches in order (the last one may be smaller)."""
    for start in range(0, len(inputs), batch_size):
        yield {"input_ids": inputs[start : start + batch_size], "labels": labels[start : start + batch_size]}
