"""Named model presets: one literal entry per name (``grep titans-mac-170m`` finds its definition).

Each entry is a dict of ``ModelConfig`` fields; ``ModelConfig.from_preset(name, **overrides)`` applies one. The
sized presets follow the papers' baselines: the Llama-2 vocabulary (32000), a 4K training length, head_dim 64,
SwiGLU. Parameter counts include the embedding and the untied head; ``tests/test_config.py`` checks that each
sized preset is within 5% of its name. The ``*-debug`` presets are the 3M-parameter ``debug`` Transformer's size
(CPU runs and tests), with chunks, segments, windows and level periods that suit ``data.seq_len`` 256.

- **Transformer++** (Titans §5.1, Nested Learning §9): the widths and depths of the papers' baselines.
- **Titans** (Titans §5.1: 170M / 340M / 400M / 760M). The paper gives no widths, depths, chunk or segment sizes,
  windows or N_p: widths and head counts follow the Transformer++ presets, depth and MLP width are set so that each
  preset is within 5% of its name. MAC, MAG and MAL have the same parameters per block (memory ~5 d^2, attention
  4 d^2); LMM blocks are lighter (memory only), so they stack more. Memory L_M = 2, expansion 4, chunks of 64;
  MAC segments and MAG/MAL windows of 512; N_p = 4.
- **HOPE and Hope-Attention** (NL §9 reports 340M / 760M / 1.3B; 170M added). The paper gives no widths, level
  counts or periods. Widths, heads and depths follow the Transformer++ presets; the CMS has three levels whose
  hidden widths sum to the Transformer++ MLP's (so Hope-Attention has its parameter count, and HOPE's
  self-modifying Titans, ~3 d^2 + 10 d^2 / n_head, is close to attention's 4 d^2). Levels learn in context every
  16 / 256 / 4096 tokens and in pretraining every 1 / 4 / 16 optimizer steps (the ``cms_levels`` default): our
  choices.
- **SRWM** (Irie et al., ICML 2022; the paper has no language-model sizes): the Transformer++ block with the
  self-referential weight matrix in place of attention. An SRWM layer has d^2 + 3 d^2 / n_head parameters (the
  output projection and the matrices W_0), against attention's 4 d^2, so the blocks are lighter and the presets
  deeper: 20 layers at 170M (Transformer++ widths), 24 layers with a 3328-wide MLP at 340M. Exact per-token
  self-modification (``srwm_chunk_size`` 1).
"""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS"]

_DEBUG = {"vocab_size": 8192, "n_layer": 4, "n_head": 4, "n_embd": 128, "intermediate_size": 384, "max_seq_len": 1024}
_SIZED = {"vocab_size": 32000, "max_seq_len": 4096}  # the Llama-2 vocabulary, 4K training length
_TITANS_DEBUG = {"memory_depth": 2, "memory_expansion": 2, "memory_chunk_size": 16, "n_persistent": 4}
# MAC, MAG and MAL at debug size read 16 persistent tokens (4 before issue 13): with 16, held-out perplexity per seed
# MAC -2.2/-0.5 %, MAG -5.2/-0.9 %, MAL +0.5/-4.0 %, and -2.0/-1.4/-6.0 % on a third seed (docs/titans-ablations)
_HYBRID_DEBUG = {**_TITANS_DEBUG, "n_persistent": 16}
_TITANS = {"memory_depth": 2, "memory_expansion": 4, "memory_chunk_size": 64, "n_persistent": 4}
_HOPE_DEBUG = {"hope_chunk_size": 16, "hope_memory_chunk_size": 16}
_SMT = {"family": "hope", "hope_safe_step": True}  # the self-modifying Titans family, with its inner-step guard


def _cms(hidden: int, tokens: tuple[int, ...] = (16, 256, 4096), steps: tuple[int, ...] = (1, 4, 16)) -> dict:
    """Three CMS levels of one hidden width that learn every ``tokens`` tokens in context and every ``steps``
    optimizer steps in the outer loop (the defaults are ``ModelConfig.cms_levels``')."""
    levels = zip(tokens, steps, strict=True)
    return {"cms_levels": [{"hidden": hidden, "tokens_per_update": t, "steps_per_update": s} for t, s in levels]}


# fmt: off  (a table: one preset per entry, the shared parts first)
PRESETS: dict[str, dict[str, Any]] = {
    # -- Transformer++ ----------------------------------------------------------------------------------------------
    "debug": {**_DEBUG},
    "transformer-debug": {**_DEBUG},
    "transformer-170m": {**_SIZED, "n_layer": 16, "n_head": 12, "n_embd": 768, "intermediate_size": 2304},
    "transformer-340m": {**_SIZED, "n_layer": 24, "n_head": 16, "n_embd": 1024, "intermediate_size": 2304},
    "transformer-760m": {**_SIZED, "n_layer": 24, "n_head": 24, "n_embd": 1536, "intermediate_size": 4096},
    "transformer-1.3b": {**_SIZED, "n_layer": 24, "n_head": 32, "n_embd": 2048, "intermediate_size": 5376},
    # -- Titans MAC: memory as context, attention within segments ---------------------------------------------------
    "titans-mac-debug": {**_DEBUG, **_HYBRID_DEBUG, "family": "titans-mac", "segment_len": 64},
    "titans-mac-170m": {
        **_SIZED,
        **_TITANS,
        "family": "titans-mac",
        "segment_len": 512,
        "n_layer": 12,
        "n_head": 12,
        "n_embd": 768,
        "intermediate_size": 1920,
    },
    "titans-mac-340m": {
        **_SIZED,
        **_TITANS,
        "family": "titans-mac",
        "segment_len": 512,
        "n_layer": 16,
        "n_head": 16,
        "n_embd": 1024,
        "intermediate_size": 2304,
    },
    "titans-mac-400m": {
        **_SIZED,
        **_TITANS,
        "family": "titans-mac",
        "segment_len": 512,
        "n_layer": 18,
        "n_head": 16,
        "n_embd": 1024,
        "intermediate_size": 2816,
    },
    "titans-mac-760m": {
        **_SIZED,
        **_TITANS,
        "family": "titans-mac",
        "segment_len": 512,
        "n_layer": 18,
        "n_head": 24,
        "n_embd": 1536,
        "intermediate_size": 3072,
    },
    # -- Titans MAG: memory as a gate on sliding-window attention ---------------------------------------------------
    "titans-mag-debug": {**_DEBUG, **_HYBRID_DEBUG, "family": "titans-mag", "sliding_window": 64},
    "titans-mag-170m": {
        **_SIZED,
        **_TITANS,
        "family": "titans-mag",
        "sliding_window": 512,
        "n_layer": 12,
        "n_head": 12,
        "n_embd": 768,
        "intermediate_size": 1920,
    },
    "titans-mag-340m": {
        **_SIZED,
        **_TITANS,
        "family": "titans-mag",
        "sliding_window": 512,
        "n_layer": 16,
        "n_head": 16,
        "n_embd": 1024,
        "intermediate_size": 2304,
    },
    "titans-mag-400m": {
        **_SIZED,
        **_TITANS,
        "family": "titans-mag",
        "sliding_window": 512,
        "n_layer": 18,
        "n_head": 16,
        "n_embd": 1024,
        "intermediate_size": 2816,
    },
    "titans-mag-760m": {
        **_SIZED,
        **_TITANS,
        "family": "titans-mag",
        "sliding_window": 512,
        "n_layer": 18,
        "n_head": 24,
        "n_embd": 1536,
        "intermediate_size": 3072,
    },
    # -- Titans MAL: memory as a layer before sliding-window attention ----------------------------------------------
    "titans-mal-debug": {**_DEBUG, **_HYBRID_DEBUG, "family": "titans-mal", "sliding_window": 64},
    "titans-mal-170m": {
        **_SIZED,
        **_TITANS,
        "family": "titans-mal",
        "sliding_window": 512,
        "n_layer": 12,
        "n_head": 12,
        "n_embd": 768,
        "intermediate_size": 1920,
    },
    "titans-mal-340m": {
        **_SIZED,
        **_TITANS,
        "family": "titans-mal",
        "sliding_window": 512,
        "n_layer": 16,
        "n_head": 16,
        "n_embd": 1024,
        "intermediate_size": 2304,
    },
    "titans-mal-400m": {
        **_SIZED,
        **_TITANS,
        "family": "titans-mal",
        "sliding_window": 512,
        "n_layer": 18,
        "n_head": 16,
        "n_embd": 1024,
        "intermediate_size": 2816,
    },
    "titans-mal-760m": {
        **_SIZED,
        **_TITANS,
        "family": "titans-mal",
        "sliding_window": 512,
        "n_layer": 18,
        "n_head": 24,
        "n_embd": 1536,
        "intermediate_size": 3072,
    },
    # -- Titans LMM: the memory alone (lighter blocks, so deeper) ---------------------------------------------------
    # the LMM alone at debug size steps 4x faster than 1 / (2 C): lower perplexity on both seeds and both evaluation
    # sets (issue 13, docs/titans-ablations); the hybrids keep the bound (MAG was 10 % worse with 4x)
    "titans-lmm-debug": {**_DEBUG, **_TITANS_DEBUG, "family": "titans-lmm", "memory_max_lr": 0.125},
    "titans-lmm-170m": {
        **_SIZED,
        **_TITANS,
        "family": "titans-lmm",
        "n_layer": 14,
        "n_head": 12,
        "n_embd": 768,
        "intermediate_size": 2304,
    },
    "titans-lmm-340m": {
        **_SIZED,
        **_TITANS,
        "family": "titans-lmm",
        "n_layer": 18,
        "n_head": 16,
        "n_embd": 1024,
        "intermediate_size": 3072,
    },
    "titans-lmm-400m": {
        **_SIZED,
        **_TITANS,
        "family": "titans-lmm",
        "n_layer": 24,
        "n_head": 16,
        "n_embd": 1024,
        "intermediate_size": 2560,
    },
    "titans-lmm-760m": {
        **_SIZED,
        **_TITANS,
        "family": "titans-lmm",
        "n_layer": 24,
        "n_head": 24,
        "n_embd": 1536,
        "intermediate_size": 3328,
    },
    # -- HOPE: self-modifying Titans, then the Continuum Memory System ----------------------------------------------
    "hope-debug": {**_DEBUG, **_HOPE_DEBUG, **_SMT, **_cms(128, tokens=(16, 64, 256), steps=(1, 2, 4))},
    "hope-170m": {**_SIZED, **_SMT, "n_layer": 16, "n_head": 12, "n_embd": 768, **_cms(768)},
    "hope-340m": {**_SIZED, **_SMT, "n_layer": 24, "n_head": 16, "n_embd": 1024, **_cms(768)},
    "hope-760m": {**_SIZED, **_SMT, "n_layer": 24, "n_head": 24, "n_embd": 1536, **_cms(1344)},
    "hope-1.3b": {**_SIZED, **_SMT, "n_layer": 24, "n_head": 32, "n_embd": 2048, **_cms(1792)},
    # -- Hope-Attention: global softmax attention, then the Continuum Memory System ---------------------------------
    "hope-attention-debug": {
        **_DEBUG,
        **_HOPE_DEBUG,
        "family": "hope-attention",
        **_cms(128, tokens=(16, 64, 256), steps=(1, 2, 4)),
    },
    "hope-attention-170m": {
        **_SIZED,
        "family": "hope-attention",
        "n_layer": 16,
        "n_head": 12,
        "n_embd": 768,
        **_cms(768),
    },
    "hope-attention-340m": {
        **_SIZED,
        "family": "hope-attention",
        "n_layer": 24,
        "n_head": 16,
        "n_embd": 1024,
        **_cms(768),
    },
    "hope-attention-760m": {
        **_SIZED,
        "family": "hope-attention",
        "n_layer": 24,
        "n_head": 24,
        "n_embd": 1536,
        **_cms(1344),
    },
    "hope-attention-1.3b": {
        **_SIZED,
        "family": "hope-attention",
        "n_layer": 24,
        "n_head": 32,
        "n_embd": 2048,
        **_cms(1792),
    },
    # -- SRWM: the self-referential weight matrix in place of attention ------------------------------------------
    "srwm-debug": {**_DEBUG, "family": "srwm"},
    "srwm-170m": {**_SIZED, "family": "srwm", "n_layer": 20, "n_head": 12, "n_embd": 768, "intermediate_size": 2304},
    "srwm-340m": {**_SIZED, "family": "srwm", "n_layer": 24, "n_head": 16, "n_embd": 1024, "intermediate_size": 3328},
}
# fmt: on
