"""The runs of bench/titans_ablations.py (issue 13): Titans Table 5's rows at debug size and the targeted runs.

Each run is a family (its ``configs/pretrain/compare/<family>.yaml``), model overrides, a group (one README table)
and seeds. Targeted runs change one thing at a time from the settings the debug presets had before issue 13.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hope.config import ModelConfig

PRESETS = {
    "transformer": "transformer-debug",
    "titans-mac": "titans-mac-debug",
    "titans-mag": "titans-mag-debug",
    "titans-mal": "titans-mal-debug",
    "titans-lmm": "titans-lmm-debug",
}
# The safeguards and sizes of the Titans debug presets before issue 13 (targeted runs change one thing from here)
BEFORE = {
    "memory_chunk_size": 16,
    "memory_max_lr": None,
    "memory_ema_momentum": True,
    "memory_max_grad_norm": 10.0,
    "memory_alpha_init": -8.0,
    "n_persistent": 4,
}
MAC_BEFORE = {**BEFORE, "segment_len": 64}
LITERAL = {"memory_ema_momentum": False, "memory_max_grad_norm": None, "memory_max_lr": 1.0}  # no safeguard
SEEDS = (1234, 1235)


@dataclass(frozen=True)
class Run:
    """One row: a family, its model overrides, the group (table) it belongs to and its seeds."""

    name: str
    family: str
    label: str
    group: str
    overrides: dict = field(default_factory=dict)
    seeds: tuple[int, ...] = SEEDS
    paper: float | None = None  # Titans Table 5 perplexity
    steps: int | None = None  # training steps; None: --steps


def _targeted(prefix: str, family: str, base: dict, changes: list[tuple[str, str, dict]], group: str) -> list[Run]:
    return [Run(f"{prefix}-{name}", family, label, group, {**base, **c}, (1234,)) for name, label, c in changes]


RUNS = [
    # -- Table 5 rows at debug size, with the presets' defaults ---------------------------------------------------
    Run("transformer", "transformer", "Transformer++", "ablation"),
    Run("lmm", "titans-lmm", "LMM", "ablation", paper=27.01),
    Run("lmm-linear", "titans-lmm", "Linear memory", "ablation", {"memory_linear": True}, paper=28.49),
    Run("lmm-noconv", "titans-lmm", "No convolution", "ablation", {"memory_conv": False}, paper=28.73),
    Run("lmm-nomomentum", "titans-lmm", "No momentum", "ablation", {"memory_momentum": False}, paper=28.98),
    Run("lmm-nodecay", "titans-lmm", "No weight decay", "ablation", {"memory_weight_decay": False}, paper=29.04),
    Run("lmm-nopersistent", "titans-lmm", "No persistent memory", "ablation", {"n_persistent": 0}, paper=27.63),
    Run("mac", "titans-mac", "+MAC", "ablation", paper=26.67),
    Run("mag", "titans-mag", "+MAG", "ablation", paper=25.70),
    Run("mal", "titans-mal", "+MAL", "ablation", paper=25.91),
    # Transformer++ widened to the hybrids' budget (3.36 M): the MLP's 384 hidden units raised to 640 (3.34 M)
    Run(
        "transformer-matched",
        "transformer",
        "Transformer++, MLP 640 (param-matched)",
        "ablation",
        {"intermediate_size": 640},
    ),  # fmt: skip
    # -- MAC's gap: one change at a time from the settings before issue 13 ------------------------------------------
    *_targeted(
        "mac",
        "titans-mac",
        MAC_BEFORE,
        [
            ("before", "before issue 13: segment 64, chunk 16, all safeguards", {}),
            ("seg128", "segment_len 128", {"segment_len": 128}),
            ("seg256", "segment_len 256 (= seq_len)", {"segment_len": 256}),
            ("literal", "literal Eq. 13: no EMA, no clipping, max_lr 1", LITERAL),
            ("noema", "memory_ema_momentum false", {"memory_ema_momentum": False}),
            ("noclip", "memory_max_grad_norm null", {"memory_max_grad_norm": None}),
            ("lr1", "memory_max_lr 1 (no bound but the sigmoid)", {"memory_max_lr": 1.0}),
            ("lr0.125", "memory_max_lr 0.125 (4x)", {"memory_max_lr": 0.125}),
            ("chunk8", "memory_chunk_size 8", {"memory_chunk_size": 8}),
            ("chunk32", "memory_chunk_size 32 (segment 64)", {"memory_chunk_size": 32}),
            ("chunk64", "memory_chunk_size 64 (= segment)", {"memory_chunk_size": 64}),
            ("alpha-4", "memory_alpha_init -4 (alpha ~ 0.018)", {"memory_alpha_init": -4.0}),
            ("alpha-2", "memory_alpha_init -2 (alpha ~ 0.12)", {"memory_alpha_init": -2.0}),
            ("np0", "n_persistent 0", {"n_persistent": 0}),
            ("np16", "n_persistent 16", {"n_persistent": 16}),
        ],
        "mac",
    ),
]
BY_NAME = {r.name: r for r in RUNS}
# Table 5's relations the issue lists: a < b in perplexity
PAPER_CHAIN = [
    ("lmm", "lmm-nopersistent"),
    ("lmm-nopersistent", "lmm-linear"),
    ("lmm-linear", "lmm-noconv"),
    ("lmm-noconv", "lmm-nomomentum"),
    ("lmm-nomomentum", "lmm-nodecay"),
    ("mag", "mal"),
    ("mal", "mac"),
    ("mac", "lmm"),
]
COLUMNS = (("val", "default corpus, val split"), ("info", "GNU info manuals (held out)"))


def resolved_config(run: Run) -> dict:
    """The run's full model config, without the preset name (two runs with equal ones are the same model)."""
    config = ModelConfig.from_preset(PRESETS[run.family], **run.overrides).to_dict()
    config.pop("name")
    return config
