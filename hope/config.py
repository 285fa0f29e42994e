"""Model configuration: one dataclass, validated, applied to a named preset (``hope.presets``) with overrides.

A run chooses a preset by name and overrides individual fields::

    cfg = ModelConfig.from_preset("transformer-170m", n_layer=8)

Every field carries an attribute docstring; ``hope config show <preset>`` prints them next to the values.
Parameter counts of the sized presets are checked against their names in ``tests/test_config.py``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
from dataclasses import dataclass, field
from typing import Any

from hope.cms_config import LEGACY_CMS_FIELDS, CMSLevel, legacy_cms_levels
from hope.ops.titans import KERNELS as MEMORY_KERNELS
from hope.presets import PRESETS

ATTN_BACKENDS = ("auto", "sdpa", "flash", "naive")
FAMILIES = ("transformer", "titans-mac", "titans-mag", "titans-mal", "titans-lmm", "hope", "hope-attention", "srwm")
TITANS_FAMILIES = FAMILIES[1:5]
HOPE_FAMILIES = ("hope", "hope-attention")


@dataclass
class ModelConfig:
    """Architecture of one model: family, sizes, attention, Titans memory, HOPE/CMS settings; validated on creation."""

    name: str = "custom"
    """Preset name this config came from (informational; shown in logs and saved beside checkpoints)."""
    family: str = "transformer"
    """Model family: ``transformer`` (Transformer++); ``titans-mac`` / ``titans-mag`` / ``titans-mal`` (Titans
    memory as context / gate / layer, §4.1-4.3); ``titans-lmm`` (the Titans memory alone, §4.4); ``hope`` /
    ``hope-attention`` (NL §3); ``srwm`` (the self-referential weight matrix in place of attention)."""
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
    hope/layers/neural_memory.py for why). The debug LMM preset uses 0.125 (4x its chunk's bound): lower perplexity
    on both seeds and both evaluation sets at 150 steps, where MAG was 10 % worse and MAC and MAL within noise
    (docs/titans-ablations); 1 (no bound but the sigmoid) made MAC 2x worse."""
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
    memory_recompute: bool = False
    """Titans and HOPE: keep only the chunk-boundary weights and momentum of the memory loops for backward and
    recompute each chunk step there (activation checkpointing, ``hope.ops.recompute``): the same gradients, for
    about one more forward of the loops and a fraction of their activation memory."""
    memory_kernel: str = "torch"
    """Titans: the memory op's kernel. ``torch``: the chunk-parallel PyTorch op on every device. ``triton``: the fused
    Triton chunk kernels (``hope.ops.titans.triton``; forward and backward, one launch per call, weights and momentum
    in place, backward recomputes from the stored chunk-boundary states) on CUDA, the PyTorch op elsewhere; memory
    depth 2, power-of-two head dim, hidden width and chunk size. Needs ``pip install 'hope[cuda]'``. ``fla``: the
    ablation "linear memory" without momentum, per token (memory_chunk_size 1) and without clip, which is exactly
    Gated DeltaNet, through flash-linear-attention's chunked gated delta rule on CUDA (``hope.ops.titans.gated_delta``;
    ``pip install 'hope[fla]'``)."""
    segment_len: int = 512
    """titans-mac: tokens per segment S^(t). The memory is read before and written after each segment; a token
    attends to the persistent tokens and to the memory tokens and tokens of its segment up to itself. Must be a
    multiple of memory_chunk_size."""
    n_persistent: int = 4
    """Titans: number N_p of learnable persistent-memory tokens per layer (Titans §3.3); 0 is the ablation
    "no persistent memory". The paper does not give N_p; ours. The debug MAC, MAG and MAL presets use 16: at 150
    steps 16 lowered held-out perplexity on 8 of 9 seeds of the three hybrids (MAL's seed 1234: +0.5 %), and
    removing them cost MAC 7 % (docs/titans-ablations). The sized presets keep 4 (no run at that size yet)."""
    memory_linear: bool = False
    """Titans ablation "linear memory": the memory is one matrix, M(x) = x W (overrides memory_depth)."""
    memory_conv: bool = True
    """Titans ablation "no convolution" when False: no causal convolution on the memory's q, k, v."""
    memory_momentum: bool = True
    """Titans ablation "no momentum" when False: the surprise decay eta_t is forced to 0 (Eq. 13)."""
    memory_weight_decay: bool = True
    """Titans ablation "no weight decay" when False: the forget gate alpha_t is forced to 0 (Eq. 14)."""
    memory_alpha_init: float = -8.0
    """Titans: initial bias of the forget gate's logit, alpha_t = sigmoid(x_t w_alpha + this) at init (Eq. 13's
    alpha_t; the paper gives no init). -8 gives alpha ~ 3e-4 (see hope/layers/neural_memory.py for why not larger)."""

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
    hope_safe_step: bool = False
    """hope: cap each token's inner step of the self-modifying memories so that a chunk cannot overshoot (the
    ``max_lr = 1/(2C)`` rule generalised to MLP memories; ``hope.ops.common.safe_step_scale``). Without it a head
    whose weights outgrow that rule can diverge in context and amplify float rounding (split-dependent float32
    logits after ~2K tokens; README "HOPE"). On in the hope presets; off reproduces models trained before it."""
    cms_levels: list[CMSLevel] = field(
        default_factory=lambda: [CMSLevel(None, 16, 1), CMSLevel(None, 256, 4), CMSLevel(None, 4096, 16)]
    )
    """HOPE CMS: the levels, fastest first (NL Eqs. 30-31): each one's width and how often it learns in context
    (``tokens_per_update``) and in the outer loop (``steps_per_update``), its outer-loop ``rule`` and ``lr_scale``.
    In YAML or --model.overrides, a list of mappings: ``[{hidden: 128, tokens_per_update: 16, steps_per_update:
    1}, ...]``; omitted keys take CMSLevel's defaults."""
    cms_inner_lr: float = 1e-3
    """HOPE CMS: in-context (test-time) step size of every level (NL Eq. 31's eta^(l)); 0 freezes the levels."""
    cms_objective: str = "teach"
    """HOPE CMS: in-context objective: ``teach`` (the LM loss's gradient dL/dy, as in pretraining) or
    ``reconstruction`` (layer-local ||SwiGLU(u) - u||^2 / d); see hope/layers/cms.py."""
    cms_max_step: float | None = None
    """HOPE CMS: cap of each in-context step (test-time learning and ``cms_learn_in_context``), per matrix, as a
    fraction of the stored matrix's Frobenius norm (ours: a period's summed gradient has no bound of its own, and a
    model pretrained with in-context learning diverged to NaN on held-out text without one; docs/continual-learning).
    None: no cap, as before."""
    cms_learn_in_context: bool = False
    """HOPE CMS: every forward learns in context, ``hope fit``'s included (NL Eq. 31 with C^(l) in tokens): level l
    steps every ``tokens_per_update`` tokens of each sequence on the layer-local objective, and the outer loss trains
    the stored weights through those steps (hope/ops/cms). Needs ``cms_objective: reconstruction``."""

    # -- SRWM (family srwm; Irie et al., ICML 2022; hope/layers/srwm.py) ------------------------------------------
    srwm_chunk_size: int = 1
    """srwm: tokens per self-modification. 1 is the paper's exact per-token recurrence; more reads every token of
    a chunk at the weights it started with and sums the chunk's updates (an approximation, faster per token)."""
    srwm_conv_kernel: int = 4
    """srwm: kernel of a causal depthwise convolution on the SRWM's input, so that a token's key and query can
    depend on the tokens just before it (ours, not the paper's; see hope/layers/srwm.py). 0: none."""
    srwm_input_softmax: bool = False
    """srwm: apply phi = softmax to each head's input x_t as well as to k_t and q_t (the paper's Eq. 2 as written;
    off in the authors' code and here)."""

    def __post_init__(self) -> None:
        self.cms_levels = [
            CMSLevel.from_dict(level, f"model.cms_levels[{i}]") if isinstance(level, dict) else level
            for i, level in enumerate(self.cms_levels)
        ]
        self.validate()

    # ----------------------------------------------------------------------------------------------------
    @property
    def padded_vocab_size(self) -> int:
        """``vocab_size`` rounded up to a multiple of ``padding_multiple``: rows of the embedding and output head."""
        m = self.padding_multiple
        return (self.vocab_size + m - 1) // m * m

    @property
    def resolved_head_dim(self) -> int:
        """Per-head width: ``head_dim``, or ``n_embd // n_head`` when it is None."""
        return self.head_dim if self.head_dim is not None else self.n_embd // self.n_head

    @property
    def resolved_intermediate_size(self) -> int:
        """SwiGLU hidden width: ``intermediate_size``, or 8/3 * n_embd rounded up to a multiple of 64 if None."""
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
        if self.memory_kernel not in MEMORY_KERNELS:
            raise ValueError(f"model.memory_kernel={self.memory_kernel!r} is unknown; choose one of {MEMORY_KERNELS}.")
        gated_delta = {
            "memory_linear": True,
            "memory_momentum": False,
            "memory_chunk_size": 1,
            "memory_max_grad_norm": None,
        }
        wrong = {key: getattr(self, key) for key, value in gated_delta.items() if getattr(self, key) != value}
        if self.memory_kernel == "fla" and wrong:
            raise ValueError(
                f"model.memory_kernel='fla' is the gated delta rule, which equals the memory only with {gated_delta}; "
                f"got {wrong}. Set those fields, or memory_kernel: torch."
            )
        # installation last: the fields' error is the one to fix first (and testable without the package)
        needs = {"triton": ("triton", "cuda"), "fla": ("fla", "fla")}.get(self.memory_kernel)
        if needs and importlib.util.find_spec(needs[0]) is None:
            raise ValueError(
                f"model.memory_kernel={self.memory_kernel!r} needs {needs[0]} (pip install 'hope[{needs[1]}]'); "
                "use memory_kernel: torch."
            )
        if self.memory_max_grad_norm is not None and self.memory_max_grad_norm <= 0:
            raise ValueError(
                f"model.memory_max_grad_norm={self.memory_max_grad_norm} must be > 0; use null to disable clipping."
            )
        if self.family in TITANS_FAMILIES:
            self._validate_titans()
        if self.family in HOPE_FAMILIES:
            self._validate_hope()
        if self.family == "srwm":
            self._validate_srwm()

    def _validate_srwm(self) -> None:
        if self.srwm_chunk_size < 1:
            raise ValueError(f"model.srwm_chunk_size={self.srwm_chunk_size} must be >= 1 (1: the exact recurrence).")
        if self.srwm_conv_kernel < 0:
            raise ValueError(f"model.srwm_conv_kernel={self.srwm_conv_kernel} must be >= 0 (0: no convolution).")
        if self.n_embd % self.n_head or self.head_dim not in (None, self.n_embd // self.n_head):
            raise ValueError(
                f"model.family='srwm' splits model.n_embd={self.n_embd} into model.n_head={self.n_head} heads with no "
                f"input projection; make n_embd divisible by n_head and leave model.head_dim null."
            )
        if self.sliding_window is not None:
            raise ValueError(
                f"model.sliding_window={self.sliding_window} is not used by model.family='srwm' (it has no "
                "attention); set model.sliding_window to null."
            )

    @property
    def resolved_cms_hidden(self) -> list[int]:
        """SwiGLU hidden width of each CMS level (``intermediate_size`` where a level leaves it None)."""
        return [level.hidden or self.resolved_intermediate_size for level in self.cms_levels]

    def _validate_hope(self) -> None:
        for name in ("hope_expansion", "hope_chunk_size", "hope_memory_chunk_size", "memory_conv_kernel"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name}={getattr(self, name)} must be >= 1 for model.family={self.family!r}.")
        if self.family == "hope" and self.n_embd % self.n_head:
            raise ValueError(f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head} (SMT heads).")
        if not self.cms_levels:
            raise ValueError("model.cms_levels is empty; give at least one level, e.g. [{tokens_per_update: 16}].")
        for i, level in enumerate(self.cms_levels):
            level.validate(f"model.cms_levels[{i}]")
        if self.cms_inner_lr < 0:
            raise ValueError(f"model.cms_inner_lr={self.cms_inner_lr} must be >= 0 (0 freezes the levels in context).")
        if self.cms_max_step is not None and self.cms_max_step <= 0:
            raise ValueError(f"model.cms_max_step={self.cms_max_step} must be > 0, or null for no cap.")
        if self.cms_objective not in ("teach", "reconstruction"):
            raise ValueError(f"model.cms_objective={self.cms_objective!r}; choose 'teach' or 'reconstruction'.")
        if self.cms_learn_in_context and self.cms_objective != "reconstruction":
            raise ValueError(
                f"model.cms_learn_in_context=true learns inside the forward, where no loss is known, but "
                f"model.cms_objective={self.cms_objective!r}; set model.cms_objective: reconstruction (layer-local)."
            )

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
        """Every field as a plain dict (CMS levels as dicts too); ``from_dict`` reads it back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """A config stored beside a checkpoint; one written before ``cms_levels`` existed is read through
        ``legacy_cms_levels`` (so old checkpoints still load), every other unknown key is an error."""
        if any(key in values for key in LEGACY_CMS_FIELDS):
            levels = legacy_cms_levels(values)
            values = {k: v for k, v in values.items() if k not in LEGACY_CMS_FIELDS} | {"cms_levels": levels}
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
    legacy = [key for key in values if key in LEGACY_CMS_FIELDS]
    if legacy:
        new_form = json.dumps(legacy_cms_levels(values))
        raise ValueError(
            f"model.{', model.'.join(legacy)}: the flat per-level lists were replaced by model.cms_levels, one entry "
            f"per level (fastest first) whose names carry their units. The same setting is: "
            f'{{"cms_levels": {new_form}}}'
        )
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f" Did you mean {close}?" if close else ""
            raise ValueError(f"Unknown model config key {key!r}.{hint} Valid keys: {known}.")
