"""Titans MAC, memory as context (Titans §4.1, Eqs. 21-25): retrieve -> attend -> write, one segment at a time.

The sequence is cut into segments S^(t) of ``segment_len`` tokens. For each segment, with x~ = RMSNorm(x):

1. **Retrieve** (Eq. 21): h = M*_{t-1}(x~ W_Q). This reads the memory that the *earlier* segments wrote. The
   segment's own tokens only serve as queries; they never change the weights that are read.
2. **Attend** (Eqs. 22-23): y = Attn([P | h | S^(t)]), full causal attention inside the segment.
3. **Write and read again** (Eqs. 24-25): the LMM runs on y.
   - It writes y into the memory (M_t = M_{t-1}(y)) and reads m = M*(y).
   - Output: o = W_O(RMSNorm(y) * sigmoid(RMSNorm(m))), the same normalised gate as MAG.

Where the paper is ambiguous, we choose:

- **One memory token per segment token.** The memory token h_j and the segment token S_j share position j, and a
  segment token i sees h_j and S_j for j <= i. Literal causal attention over the concatenation [P | h | S] would
  let token i see every h_j, including h_j = M*(q_j) of later tokens j > i. That is a view of the very tokens a
  causal LM must predict. P is visible to every token and is position-free; see ``hope.layers.attention``.
- **RoPE positions are local to the segment** (0 .. segment_len - 1), so every segment is computed alike.
- **Causal read after the write.** The read m = M*_t(y_t) of Eq. 25, taken after writing the whole segment, would
  also leak later tokens. We use the LMM's chunk rule instead (Titans §3.2): y_j reads the weights at the start
  of its memory chunk, so it sees the writes of the earlier segments and of the earlier chunks of its own segment.
  With ``memory_chunk_size == segment_len`` both reads of a segment use M_{t-1}.

**Two query streams, one memory.** The retrieval queries come from the segment tokens x~, and the read after the
write takes its queries from y. Both use the same W_Q and q-convolution, but each stream has its own causal
convolution history. The memory state (``MACState.memory``) carries y's query and key/value histories, and
``MACState.query_cache`` carries x~'s.

**Streaming at any split.** The state keeps the unfinished segment:
- the rotated keys and the values of its memory tokens and its tokens;
- the weights M_{t-1} its retrieval reads.

A call can therefore start or stop anywhere inside a segment. One call equals any split of it into calls.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from hope.config import ModelConfig
from hope.layers.attention import CausalSelfAttention
from hope.layers.neural_memory import NeuralMemoryState
from hope.layers.norm import RMSNorm
from hope.layers.titans.blocks import GatedOutput, TitansBlock

__all__ = ["MACBlock", "MACState"]


class MACState(NamedTuple):
    """Recurrent state of a MAC block; P is the number of tokens of the current segment seen so far."""

    memory: NeuralMemoryState
    """the memory written with y; its conv_cache holds y's query and key/value histories"""
    retrieval_weights: tuple[torch.Tensor, ...]
    """M_{t-1}: the weights the current segment's retrieval reads (those at the segment's start)"""
    query_cache: torch.Tensor | None
    """causal-conv history of the retrieval queries (the segment tokens' stream); None without convolution"""
    keys: torch.Tensor
    """[B, H, 2, P, D]: rotated keys of the segment's memory tokens h (index 0) and its tokens (index 1)"""
    values: torch.Tensor
    """[B, H, 2, P, D]: their values"""


class MACBlock(TitansBlock):
    """Titans MAC block: x + MAC(RMSNorm(x)), then the SwiGLU sub-layer."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.segment_len = config.segment_len
        self.mixer_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.attn = CausalSelfAttention(config, output_proj=False)
        self.out = GatedOutput(config.n_embd, config.norm_eps)

    def init_state(self, x_BTC: torch.Tensor) -> MACState:
        """The state at the start of a stream: the initial memory, no segment seen."""
        memory = self.memory.init_state(x_BTC.shape[0])
        query_cache = None if memory.conv_cache is None else memory.conv_cache[0]
        empty = x_BTC.new_zeros(x_BTC.shape[0], self.attn.n_head, 2, 0, self.attn.head_dim)
        return MACState(memory, memory.weights, query_cache, empty, empty)

    def forward(self, x: torch.Tensor, state: MACState | None = None) -> tuple[torch.Tensor, MACState]:
        """The block's output and the new state (None starts a stream); calls may start and stop anywhere."""
        h = self.mixer_norm(x)
        state = self.init_state(h) if state is None else state
        outputs, start = [], 0
        while start < h.shape[1]:  # pieces that each lie inside one segment
            end = min(h.shape[1], start + self.segment_len - state.keys.shape[3])
            o, state = self.segment(h[:, start:end], state)
            outputs.append(o)
            start = end
        return self.feed_forward(x + torch.cat(outputs, dim=1)), state

    def retrieve(self, x_BTC: torch.Tensor, state: MACState) -> tuple[torch.Tensor, torch.Tensor | None]:
        """h = M*_{t-1}(q(x)) (Eq. 21) at the segment's start weights, on the retrieval query stream."""
        conv_cache = None if state.query_cache is None else (state.query_cache, state.memory.conv_cache[1])
        read_state = state.memory._replace(weights=state.retrieval_weights, conv_cache=conv_cache)
        h, read_state = self.memory.read(x_BTC, read_state)
        return h, None if read_state.conv_cache is None else read_state.conv_cache[0]

    def segment(self, x_BTC: torch.Tensor, state: MACState) -> tuple[torch.Tensor, MACState]:
        """Tokens x [B, n, C] that continue (or start) the current segment: retrieve -> attend -> write."""
        seen, n = state.keys.shape[3], x_BTC.shape[1]
        if seen == 0:  # a new segment retrieves from everything the earlier segments wrote
            state = state._replace(retrieval_weights=state.memory.weights)
        memory_tokens, query_cache = self.retrieve(x_BTC, state)

        positions = torch.arange(seen, seen + n, device=x_BTC.device)  # segment-local
        q, k, v = self.attn.project(x_BTC)
        k_mem, v_mem = self.attn.project_kv(memory_tokens)
        new_keys = torch.stack([self.attn.rotate(k_mem, positions), self.attn.rotate(k, positions)], dim=2)
        keys = torch.cat([state.keys, new_keys], dim=3)  # [B, H, 2, seen + n, D]
        values = torch.cat([state.values, torch.stack([v_mem, v], dim=2)], dim=3)
        key_positions = torch.arange(seen + n, device=x_BTC.device).repeat(2)  # h_j and S_j both sit at j
        y = self.attn.attend(
            q, positions, keys.flatten(2, 3), values.flatten(2, 3), key_positions, self.persistent
        )  # Eqs. 22-23

        m, memory = self.memory(y, state.memory)  # Eqs. 24-25: write M_t = M_{t-1}(y), read M*(y) chunk-causally
        if seen + n == self.segment_len:  # segment complete: the next one starts empty
            keys, values = keys[:, :, :, :0], values[:, :, :, :0]
        return self.out(y, m), MACState(memory, state.retrieval_weights, query_cache, keys, values)
