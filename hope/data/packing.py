"""Packing tokenized documents into one token stream, and fixed-length training blocks over that stream.

The stream is ``[bos] doc0 [eos] [bos] doc1 [eos] ...`` (nanoGPT/litgpt style: no padding, documents cross
block boundaries). Block ``i`` is ``tokens[i*seq_len : i*seq_len + seq_len + 1]``: consecutive blocks overlap by
one token, so every token is a target exactly once and ``inputs, targets = block[:-1], block[1:]``.
"""

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id of a vocabulary: uint16 up to 65536 tokens."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def pack_documents(
    docs: Iterable[Sequence[int]], bos_id: int | None, eos_id: int | None, dtype: np.dtype | type = np.uint32
) -> np.ndarray:
    """Concatenate documents as ``[bos] + tokens + [eos]`` each (a ``None`` id is left out)."""
    head = [] if bos_id is None else [bos_id]
    tail = [] if eos_id is None else [eos_id]
    parts = [np.asarray(head + list(doc) + tail, dtype=dtype) for doc in docs]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def num_blocks(n_tokens: int, seq_len: int) -> int:
    """How many ``seq_len + 1``-token blocks a stream of ``n_tokens`` holds."""
    return max(n_tokens - 1, 0) // seq_len


class PackedBlocks(Dataset):
    """Map-style view of a 1-D token array as blocks of ``seq_len + 1`` tokens (int64 tensors).

    Args:
        tokens: the packed token stream (a numpy memmap in practice; it is never copied whole).
        seq_len: tokens per training sequence; each block has one more for the shifted targets.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len={seq_len} must be >= 1")
        self.tokens = tokens
        self.seq_len = seq_len

    def __len__(self) -> int:
        return num_blocks(len(self.tokens), self.seq_len)

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < len(self):
            raise IndexError(f"block {i} out of range for {len(self)} blocks")
        start = i * self.seq_len
        return torch.from_numpy(self.tokens[start : start + self.seq_len + 1].astype(np.int64))


def collate_blocks(blocks: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stack blocks into ``{"input_ids": [B, T], "labels": [B, T]}`` with labels the next tokens."""
    x = torch.stack(blocks)  # (B, T + 1)
    return {"input_ids": x[:, :-1].contiguous(), "labels": x[:, 1:].contiguous()}
