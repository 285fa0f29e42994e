"""Model configuration: one dataclass, a registry of named presets, and validated overrides.

A run chooses a preset by name and overrides individual fields::

    cfg = ModelConfig.from_preset("transformer-170m", n_layer=8)

Every field carries an attribute docstring; ``hope config show <preset>`` prints them next to the values.
Parameter counts of the sized presets are checked against their names in ``tests/test_config.py``.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any

ATTN_BACKENDS = ("auto", "sdpa", "flash", "naive")
FAMILIES = ("transformer",)


@dataclass
class ModelConfig:
    name: str = "custom"
    """Preset name this config came from (informational; shown in logs and saved beside checkpoints)."""
    family: str = "transformer"
    """Model family: ``transformer`` (Transformer++). Titans and HOPE families plug in here."""
    vocab_size: int = 8192
    """Number of token ids the tokenizer can produce. Must be >= the tokenizer's vocab size."""
    padding_multiple: int = 64
    """The embedding and output head are padded to a multiple of this (faster matmuls; nanoGPT/litgpt habit)."""
    n_layer: int = 4
    """Number of blocks."""
    n_head: int = 4
    """Number of attention heads."""
    n_embd: int = 128
    """Model width d_model."""
    head_dim: int | None = None
    """Per-head width; None means n_embd // n_head."""
    intermediate_size: int | None = None
    """Hidden width of the SwiGLU MLP; None means 8/3 * n_embd rounded up to a multiple of 64 (Llama)."""
    max_seq_len: int = 2048
    """Longest input the model accepts (RoPE tables are built for this length)."""
    rope_base: float = 10000.0
    """RoPE base frequency theta."""
    norm_eps: float = 1e-6
    """Epsilon of RMSNorm."""
    sliding_window: int | None = None
    """If set, each token attends only to itself and the previous sliding_window - 1 tokens."""
    attn_backend: str = "auto"
    """Attention kernel: ``auto`` (flash-attn on CUDA in half precision when installed, else SDPA), ``sdpa``,
    ``flash`` (error if unavailable) or ``naive`` (explicit softmax; the reference used in tests)."""
    init_std: float = 0.02
    """Std of the normal init of embeddings and linear weights; residual output projections get
    init_std / sqrt(2 * n_layer) (GPT-2 scaled init) so the residual stream's variance stays O(1) at depth."""
    tie_embeddings: bool = False
    """Share the token embedding and the output head weights."""

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------------------------------------------
    @property
    def padded_vocab_size(self) -> int:
        m = self.padding_multiple
        return (self.vocab_size + m - 1) // m * m

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.n_embd // self.n_head

    @property
    def resolved_intermediate_size(self) -> int:
        if self.intermediate_size is not None:
            return self.intermediate_size
        return (8 * self.n_embd // 3 + 63) // 64 * 64

    def validate(self) -> None:
        """Raise ValueError naming the field, its value and a fix for inconsistent settings."""
        if self.family not in FAMILIES:
            raise ValueError(f"model.family={self.family!r} is unknown; choose one of {FAMILIES}.")
        if self.attn_backend not in ATTN_BACKENDS:
            raise ValueError(f"model.attn_backend={self.attn_backend!r} is unknown; choose one of {ATTN_BACKENDS}.")
        for name in ("vocab_size", "n_layer", "n_head", "n_embd", "max_seq_len", "padding_multiple"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name}={getattr(self, name)} must be >= 1.")
        if self.head_dim is None and self.n_embd % self.n_head:
            raise ValueError(
                f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}; "
                "change one of them or set model.head_dim explicitly."
            )
        if self.resolved_head_dim % 2:
            raise ValueError(f"head_dim={self.resolved_head_dim} must be even for RoPE; change n_embd or n_head.")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"model.sliding_window={self.sliding_window} must be >= 1 or null (full attention).")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        _check_keys(values)
        return cls(**values)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """The preset ``name`` with ``overrides`` applied; unknown names and keys raise a clear error."""
        if name not in PRESETS:
            close = difflib.get_close_matches(name, PRESETS, n=3)
            hint = f" Did you mean {close}?" if close else ""
            raise ValueError(f"model.preset={name!r} is not a known preset.{hint} Known presets: {sorted(PRESETS)}.")
        _check_keys(overrides)
        return cls(**{**PRESETS[name], "name": name, **overrides})


def _check_keys(values: dict[str, Any]) -> None:
    known = [f.name for f in dataclasses.fields(ModelConfig)]
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f" Did you mean {close}?" if close else ""
            raise ValueError(f"Unknown model config key {key!r}.{hint} Valid keys: {known}.")


# ----------------------------------------------------------------------------------------------------------
# Presets. Sized presets follow the papers' Transformer++ baselines (Titans §5.1, Nested Learning §9): Llama-2
# tokenizer (vocab 32000), head_dim 64, SwiGLU. Counts include embedding and untied head; see tests/test_config.py.
PRESETS: dict[str, dict[str, Any]] = {}


def register_preset(name: str, **values: Any) -> None:
    """Add a named preset (used by other model families to register theirs)."""
    if name in PRESETS:
        raise ValueError(f"preset {name!r} is already registered")
    _check_keys(values)
    PRESETS[name] = values


register_preset("debug", vocab_size=8192, n_layer=4, n_head=4, n_embd=128, intermediate_size=384, max_seq_len=1024)
register_preset("transformer-debug", **PRESETS["debug"])
register_preset("transformer-170m", vocab_size=32000, n_layer=16, n_head=12, n_embd=768, intermediate_size=2304,
                max_seq_len=4096)
register_preset("transformer-340m", vocab_size=32000, n_layer=24, n_head=16, n_embd=1024, intermediate_size=2304,
                max_seq_len=4096)
register_preset("transformer-760m", vocab_size=32000, n_layer=24, n_head=24, n_embd=1536, intermediate_size=4096,
                max_seq_len=4096)
register_preset("transformer-1.3b", vocab_size=32000, n_layer=24, n_head=32, n_embd=2048, intermediate_size=5376,
                max_seq_len=4096)

