"""Model configuration: one dataclass, a registry of named presets, and validated overrides.

A run chooses a preset by name and overrides individual fields::

    cfg = ModelConfig.from_preset("transformer-170m", n_layer=8)

Every field carries an attribute docstring; ``hope config show <preset>`` prints them next to the values.
Parameter counts of the sized presets are checked against their names in ``tests/test_config.py``.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

ATTN_BACKENDS = ("auto", "sdpa", "flash", "naive")
FAMILIES = ("transformer", "titans-mac", "titans-mag", "titans-mal", "titans-lmm", "hope", "hope-attention")
TITANS_FAMILIES = FAMILIES[1:5]
HOPE_FAMILIES = ("hope", "hope-attention")
CMS_RULES = ("adamw", "sgd", "deep_momentum")


@dataclass
class ModelConfig:
    name: str = "custom"
    """Preset name this config came from (informational; shown in logs and saved beside checkpoints)."""
    family: str = "transformer"
    """Model family: ``transformer`` (Transformer++); ``titans-mac`` / ``titans-mag`` / ``titans-mal`` (Titans
    memory as context / gate / layer, §4.1-4.3); ``titans-lmm`` (the Titans memory alone, §4.4)."""
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
    """If set, each token attends only to itself and the previous sliding_window - 1 tokens (required by
    titans-mag and titans-mal, unused by titans-mac and titans-lmm)."""
    attn_backend: str = "auto"
    """Attention kernel: ``auto`` (flash-attn on CUDA in half precision when installed, else SDPA), ``sdpa``,
    ``flash`` (error if unavailable) or ``naive`` (explicit softmax; the reference used in tests)."""
    init_std: float = 0.02
    """Std of the normal init of embeddings and linear weights; residual output projections get
    init_std / sqrt(2 * n_layer) (GPT-2 scaled init) so the residual stream's variance stays O(1) at depth."""
    tie_embeddings: bool = False
    """Share the token embedding and the output head weights."""

    # -- Titans neural long-term memory (families titans-*; ignored by transformer) --------------------------
    memory_depth: int = 2
    """Titans: depth L_M of the memory MLP (Titans §3.1, §5.5); >= 1."""
    memory_expansion: int = 4
    """Titans: hidden width of the memory MLP as a multiple of head_dim (used when memory_depth >= 2)."""
    memory_chunk_size: int = 64
    """Titans: tokens per memory chunk b; the chunk's gradients are taken at its start weights and every token of
    a chunk reads those weights (Titans §3.2). Smaller is closer to per-token updates, larger is faster."""
    memory_conv_kernel: int = 4
    """Titans: kernel of the causal depthwise convolution after the memory's q, k, v projections (Titans §4.4)."""
    memory_max_lr: float | None = None
    """Titans: largest inner-loop step size theta_t; None means 1 / (2 * memory_chunk_size) (see
    hope/layers/neural_memory.py for why)."""
    memory_ema_momentum: bool = True
    """Titans: scale theta_t by (1 - eta_t), so that the momentum S_t (Eq. 13) is an average of gradients and the
    step never exceeds memory_max_lr whatever eta_t the model learns. False is Eq. 13 read literally, where a
    learned eta_t -> 1 multiplies the step by up to C / (1 - eta) and the memory can diverge."""
    memory_max_grad_norm: float | None = 10.0
    """Titans and HOPE's self-modifying Titans: clip each token's inner-loop gradient (all layers of a memory
    together) to this norm before the update, so one chunk moves a memory by at most chunk size * max_lr * this.
    Typical norms at init are 0.2-5. None disables it. With memory_ema_momentum it keeps a deep memory finite on
    runs of repeated tokens (see hope/layers/neural_memory.py)."""
    memory_compile: bool = False
    """Titans and HOPE: run the memory ops' per-chunk steps through torch.compile. On an H100 (bf16, 2048 x 8) it
    raised titans-mac-170m from 5.2K to 7.4K tokens/s and cut peak memory by 14%, after a ~20 s compile; on CPU
    (2 cores) it took a hope-debug self-modifying layer from 132 to 74-79 ms forward and backward, after ~45 s. Needs
    a working torch.compile backend (a C++ compiler on CPU, Triton on GPU)."""
    segment_len: int = 512
    """titans-mac: tokens per segment S^(t). The memory is read before and written after each segment; a token
    attends to the persistent tokens and to the memory tokens and tokens of its segment up to itself. Must be a
    multiple of memory_chunk_size."""
    n_persistent: int = 4
    """Titans: number N_p of learnable persistent-memory tokens per layer (Titans §3.3); 0 is the ablation
    "no persistent memory"."""
    memory_linear: bool = False
    """Titans ablation "linear memory": the memory is one matrix, M(x) = x W (overrides memory_depth)."""
    memory_conv: bool = True
    """Titans ablation "no convolution" when False: no causal convolution on the memory's q, k, v."""
    memory_momentum: bool = True
    """Titans ablation "no momentum" when False: the surprise decay eta_t is forced to 0 (Eq. 13)."""
    memory_weight_decay: bool = True
    """Titans ablation "no weight decay" when False: the forget gate alpha_t is forced to 0 (Eq. 14)."""

    # -- HOPE (families hope, hope-attention; NL §3, arXiv §8.3). The self-modifying Titans also reads
    # memory_conv_kernel, memory_conv, memory_max_lr and memory_max_grad_norm above. -----------------------------
    hope_expansion: int = 1
    """hope: hidden width of every self-modifying memory MLP (M_k, M_v, M_eta, M_alpha, M_q, M_memory) as a multiple
    of head_dim (NL Eq. 89: each memory is a 2-layer residual MLP; the paper gives no width)."""
    hope_chunk_size: int = 64
    """hope: tokens per in-context update of the projection memories M_k, M_v, M_eta, M_alpha (NL §8.2, Eq. 90)."""
    hope_memory_chunk_size: int = 64
    """hope: tokens per in-context update of the retrieval memory M_memory (NL §8.2, Eq. 91)."""
    hope_adaptive_q: bool = False
    """hope: q from a self-modifying memory M_q instead of the static projection x W_q (NL Eq. 83 vs 88)."""
    cms_hidden: list[int] | None = None
    """HOPE CMS: SwiGLU hidden width of each level, fastest first; None means intermediate_size for every level.
    Its length must equal that of cms_periods."""
    cms_periods: list[int] = field(default_factory=lambda: [16, 256, 4096])
    """HOPE CMS: in-context update period C^(l) of each level in TOKENS, fastest first (NL Eq. 31); the number of
    entries is the number of levels. Used by test-time learning (hope.ttl)."""
    cms_inner_lr: float = 1e-3
    """HOPE CMS: in-context (test-time) step size of every level (NL Eq. 31's eta^(l)); 0 freezes the levels."""
    cms_objective: str = "teach"
    """HOPE CMS: in-context objective: ``teach`` (the LM loss's gradient dL/dy, as in pretraining) or
    ``reconstruction`` (layer-local ||SwiGLU(u) - u||^2); see hope/layers/cms.py."""
    cms_level_periods: list[int] = field(default_factory=lambda: [1, 4, 16])
    """HOPE outer loop: level l's parameters step every cms_level_periods[l] OPTIMIZER steps on the gradients summed
    over those steps (NL Eq. 31 in pretraining; hope.optim.LevelOptimizer). One entry per CMS level."""
    cms_level_rules: list[str] = field(default_factory=lambda: ["adamw", "adamw", "adamw"])
    """HOPE outer loop: optimizer rule of each CMS level: ``adamw``, ``sgd`` or ``deep_momentum`` (NL Eq. 23)."""
    cms_level_lr_scale: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    """HOPE outer loop: each CMS level's learning rate as a multiple of model.optim.lr (same warmup/cosine)."""

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
        if self.memory_max_grad_norm is not None and self.memory_max_grad_norm <= 0:
            raise ValueError(
                f"model.memory_max_grad_norm={self.memory_max_grad_norm} must be > 0; use null to disable clipping."
            )
        if self.family in TITANS_FAMILIES:
            self._validate_titans()
        if self.family in HOPE_FAMILIES:
            self._validate_hope()

    @property
    def resolved_cms_hidden(self) -> list[int]:
        return (
            list(self.cms_hidden)
            if self.cms_hidden is not None
            else [self.resolved_intermediate_size] * len(self.cms_periods)
        )

    def _validate_hope(self) -> None:
        for name in ("hope_expansion", "hope_chunk_size", "hope_memory_chunk_size", "memory_conv_kernel"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name}={getattr(self, name)} must be >= 1 for model.family={self.family!r}.")
        if self.family == "hope" and self.n_embd % self.n_head:
            raise ValueError(f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head} (SMT heads).")
        L = len(self.cms_periods)
        if L < 1 or min(self.cms_periods) < 1:
            raise ValueError(f"model.cms_periods={self.cms_periods} needs >= 1 level, each period >= 1 token.")
        for name in ("cms_hidden", "cms_level_periods", "cms_level_rules", "cms_level_lr_scale"):
            value = getattr(self, name)
            if value is not None and len(value) != L:
                raise ValueError(
                    f"model.{name}={list(value)} has {len(value)} entries but model.cms_periods="
                    f"{list(self.cms_periods)} defines {L} CMS levels; give one entry per level."
                )
        if min(self.resolved_cms_hidden) < 1 or min(self.cms_level_periods) < 1:
            raise ValueError(
                f"model.cms_hidden and model.cms_level_periods need entries >= 1, got "
                f"{self.cms_hidden}, {self.cms_level_periods}."
            )
        bad = [r for r in self.cms_level_rules if r not in CMS_RULES]
        if bad:
            raise ValueError(f"model.cms_level_rules has unknown rules {bad}; choose from {CMS_RULES}.")
        if self.cms_inner_lr < 0 or min(self.cms_level_lr_scale) < 0:
            raise ValueError(f"model.cms_inner_lr={self.cms_inner_lr} and model.cms_level_lr_scale must be >= 0.")
        if self.cms_objective not in ("teach", "reconstruction"):
            raise ValueError(f"model.cms_objective={self.cms_objective!r}; choose 'teach' or 'reconstruction'.")

    def _validate_titans(self) -> None:
        for name in ("memory_depth", "memory_expansion", "memory_chunk_size", "memory_conv_kernel", "segment_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name}={getattr(self, name)} must be >= 1 for model.family={self.family!r}.")
        if self.n_persistent < 0:
            raise ValueError(f"model.n_persistent={self.n_persistent} must be >= 0 (0: no persistent memory).")
        if self.memory_max_lr is not None and self.memory_max_lr <= 0:
            raise ValueError(f"model.memory_max_lr={self.memory_max_lr} must be > 0, or null for 1/(2*chunk).")
        uses_window = self.family in ("titans-mag", "titans-mal")
        if uses_window and self.sliding_window is None:
            raise ValueError(
                f"model.family={self.family!r} needs model.sliding_window (its attention is sliding-window, "
                "Titans §4.2-4.3); set it, e.g. 512."
            )
        if not uses_window and self.sliding_window is not None:
            what = "attends within segments of segment_len" if self.family == "titans-mac" else "has no attention"
            raise ValueError(
                f"model.sliding_window={self.sliding_window} is not used by model.family={self.family!r} (it {what}); "
                "set model.sliding_window to null."
            )
        if self.family == "titans-mac" and self.segment_len % self.memory_chunk_size:
            raise ValueError(
                f"model.segment_len={self.segment_len} must be a multiple of model.memory_chunk_size="
                f"{self.memory_chunk_size}, so that each segment writes whole chunks and the next one retrieves from "
                "the fully written memory; change one of them."
            )
        inner = self.n_head * self.resolved_head_dim
        if self.family in ("titans-mac", "titans-mag") and inner != self.n_embd:
            raise ValueError(
                f"model.family={self.family!r} gates the attention heads (n_head * head_dim = {inner}) with the memory "
                f"output (n_embd = {self.n_embd}), so they must be equal; set model.head_dim to null or "
                f"{self.n_embd // self.n_head}."
            )
        if self.family != "titans-lmm" and self.attn_backend == "flash":
            raise ValueError(
                f"model.attn_backend='flash' cannot express the persistent-prefix and segment masks of "
                f"model.family={self.family!r}; use 'auto' or 'sdpa'."
            )

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
register_preset(
    "transformer-170m", vocab_size=32000, n_layer=16, n_head=12, n_embd=768, intermediate_size=2304, max_seq_len=4096
)
register_preset(
    "transformer-340m", vocab_size=32000, n_layer=24, n_head=16, n_embd=1024, intermediate_size=2304, max_seq_len=4096
)
register_preset(
    "transformer-760m", vocab_size=32000, n_layer=24, n_head=24, n_embd=1536, intermediate_size=4096, max_seq_len=4096
)
register_preset(
    "transformer-1.3b", vocab_size=32000, n_layer=24, n_head=32, n_embd=2048, intermediate_size=5376, max_seq_len=4096
)


# Titans (Titans §5.1: 170M/340M/400M/760M, Llama-2 vocabulary, 4K training length). The paper gives no widths,
# depths, chunk or segment sizes, windows or N_p: widths and head counts follow the Transformer++ presets above;
# depth and MLP width are set so that each preset is within 5% of its name. MAC, MAG and MAL have the same
# parameters per block (memory ~5 d^2, attention 4 d^2); LMM blocks are lighter (memory only), so they stack
# more. Memory: L_M = 2, expansion 4, chunks of 64; MAC segments and MAG/MAL windows of 512; N_p = 4.
_TITANS_SPAN = {  # the field that bounds each family's attention: MAC's segment, MAG's and MAL's window
    "titans-mac": "segment_len",
    "titans-mag": "sliding_window",
    "titans-mal": "sliding_window",
    "titans-lmm": None,
}
_TITANS_SIZES = {  # size -> n_embd, n_head, (n_layer, intermediate_size) for MAC/MAG/MAL, the same for LMM
    "170m": (768, 12, (12, 1920), (14, 2304)),
    "340m": (1024, 16, (16, 2304), (18, 3072)),
    "400m": (1024, 16, (18, 2816), (24, 2560)),
    "760m": (1536, 24, (18, 3072), (24, 3328)),
}
for _family, _span in _TITANS_SPAN.items():
    # debug: the `debug` Transformer's size (CPU runs, tests), chunks/segments/windows that suit data.seq_len 256
    register_preset(
        f"{_family}-debug",
        **PRESETS["debug"],
        family=_family,
        memory_depth=2,
        memory_expansion=2,
        memory_chunk_size=16,
        n_persistent=4,
        **({_span: 64} if _span else {}),
    )
    for _size, (_d, _h, _hybrid, _lmm) in _TITANS_SIZES.items():
        _layers, _mlp = _lmm if _family == "titans-lmm" else _hybrid
        register_preset(
            f"{_family}-{_size}",
            family=_family,
            vocab_size=32000,
            n_embd=_d,
            n_head=_h,
            n_layer=_layers,
            intermediate_size=_mlp,
            max_seq_len=4096,
            memory_depth=2,
            memory_expansion=4,
            memory_chunk_size=64,
            n_persistent=4,
            **({_span: 512} if _span else {}),
        )


# HOPE and Hope-Attention (NL §9 reports 340M / 760M / 1.3B; 170M added; Llama-2 vocabulary). The paper gives no widths,
# level counts or periods. Widths, heads and depths follow the Transformer++ presets above; the CMS has three
# levels whose hidden widths sum to the Transformer++ MLP's (so Hope-Attention has its parameter count, and HOPE's
# self-modifying Titans, ~3 d^2 + 10 d^2 / n_head, is close to attention's 4 d^2). Levels update in context every
# 16 / 256 / 4096 tokens and in pretraining every 1 / 4 / 16 optimizer steps: our choices.
_HOPE_SIZES = {  # size -> n_embd, n_head, n_layer, hidden width of each of the three CMS levels
    "170m": (768, 12, 16, 768),
    "340m": (1024, 16, 24, 768),
    "760m": (1536, 24, 24, 1344),
    "1.3b": (2048, 32, 24, 1792),
}
for _family in ("hope", "hope-attention"):
    # debug: the `debug` Transformer's size; chunks of 16 and short level periods suit data.seq_len 256 on CPU
    register_preset(
        f"{_family}-debug",
        **PRESETS["debug"],
        family=_family,
        hope_chunk_size=16,
        hope_memory_chunk_size=16,
        cms_hidden=[128, 128, 128],
        cms_periods=[16, 64, 256],
        cms_level_periods=[1, 2, 4],
    )
    for _size, (_d, _h, _layers, _mlp) in _HOPE_SIZES.items():
        register_preset(
            f"{_family}-{_size}",
            family=_family,
            vocab_size=32000,
            n_embd=_d,
            n_head=_h,
            n_layer=_layers,
            max_seq_len=4096,
            cms_hidden=[_mlp] * 3,
        )
