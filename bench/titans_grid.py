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
SEEDS3 = (1234, 1235, 1236)  # the rows the goal compares (the Titans rows vary 2-3x more between seeds)


@dataclass(frozen=True)
class Run:
    """One row: a family, its model overrides, the group (table) it belongs to and its seeds.

    ``base`` pins settings the row must keep when a preset's default changes (the settings the Titans presets had
    before issue 13, so that a default changed by this issue does not change the rows measured before it);
    ``overrides`` is the row's own change, the one its table shows."""

    name: str
    family: str
    label: str
    group: str
    overrides: dict = field(default_factory=dict)
    seeds: tuple[int, ...] = SEEDS
    paper: float | None = None  # Titans Table 5 perplexity
    steps: int | None = None  # training steps; None: --steps
    base: dict = field(default_factory=dict)

    @property
    def model_overrides(self) -> dict:
        """Everything the run passes to ``--model.overrides``."""
        return {**self.base, **self.overrides}


def _targeted(
    prefix: str, family: str, base: dict, changes: list[tuple[str, str, dict]], group: str, seeds: dict | None = None
) -> list[Run]:
    """One run per change from ``base``, seed 1234 unless ``seeds`` names the change."""
    seeds = seeds or {}
    return [
        Run(f"{prefix}-{name}", family, label, group, c, seeds.get(name, (1234,)), base=base)
        for name, label, c in changes
    ]


# the changes that helped MAC, tried on the other variants
HYBRID_CHANGES = [
    ("np16", "n_persistent 16", {"n_persistent": 16}),
    ("lr0.125", "memory_max_lr 0.125 (4x)", {"memory_max_lr": 0.125}),
]


RUNS = [
    # -- Table 5 rows at debug size, with the presets' settings before issue 13 -------------------------------------
    Run("transformer", "transformer", "Transformer++", "ablation", seeds=SEEDS3),
    Run("lmm", "titans-lmm", "LMM", "ablation", seeds=SEEDS3, paper=27.01, base=BEFORE),
    Run("lmm-linear", "titans-lmm", "Linear memory", "ablation", {"memory_linear": True}, paper=28.49, base=BEFORE),
    Run("lmm-noconv", "titans-lmm", "No convolution", "ablation", {"memory_conv": False}, paper=28.73, base=BEFORE),
    Run(
        "lmm-nomomentum", "titans-lmm", "No momentum", "ablation", {"memory_momentum": False}, paper=28.98, base=BEFORE
    ),
    Run(
        "lmm-nodecay",
        "titans-lmm",
        "No weight decay",
        "ablation",
        {"memory_weight_decay": False},
        paper=29.04,
        base=BEFORE,
    ),
    Run(
        "lmm-nopersistent",
        "titans-lmm",
        "No persistent memory",
        "ablation",
        {"n_persistent": 0},
        paper=27.63,
        base=BEFORE,
    ),
    Run("mac", "titans-mac", "+MAC", "ablation", seeds=SEEDS3, paper=26.67, base=MAC_BEFORE),
    Run("mag", "titans-mag", "+MAG", "ablation", seeds=SEEDS3, paper=25.70, base=BEFORE),
    Run("mal", "titans-mal", "+MAL", "ablation", seeds=SEEDS3, paper=25.91, base=BEFORE),
    # Transformer++ widened to the hybrids' budget (3.36 M): the MLP's 384 hidden units raised to 640 (3.34 M)
    Run(
        "transformer-matched",
        "transformer",
        "Transformer++, MLP 640 (param-matched)",
        "ablation",
        {"intermediate_size": 640},
        SEEDS3,
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
            ("np16-lr0.125", "n_persistent 16 and memory_max_lr 0.125", {"n_persistent": 16, "memory_max_lr": 0.125}),
        ],
        "mac",
        seeds={"np16": SEEDS, "np16-lr0.125": SEEDS},
    ),
    # -- the same changes for the other variants ---------------------------------------------------------------------
    *_targeted("mag", "titans-mag", BEFORE, HYBRID_CHANGES, "mag", seeds={"np16": SEEDS}),
    *_targeted("mal", "titans-mal", BEFORE, HYBRID_CHANGES, "mal", seeds={"np16": SEEDS}),
    *_targeted("lmm", "titans-lmm", BEFORE, HYBRID_CHANGES[1:], "lmm", seeds={"lr0.125": SEEDS}),
    # -- the four variants with the debug presets as they are now (after the defaults this issue changed) -------------
    Run("lmm-default", "titans-lmm", "LMM", "defaults", seeds=SEEDS3),
    Run("mac-default", "titans-mac", "+MAC", "defaults", seeds=SEEDS3),
    Run("mag-default", "titans-mag", "+MAG", "defaults", seeds=SEEDS3),
    Run("mal-default", "titans-mal", "+MAL", "defaults", seeds=SEEDS3),
    # -- 600 steps (the compare configs' schedule, 1.2 M tokens): do the 150-step relations hold? ---------------------
    Run(
        "transformer-matched-600",
        "transformer",
        "Transformer++, MLP 640",
        "long",
        {"intermediate_size": 640},
        (1234,),
        steps=600,
    ),
    Run("mal-600", "titans-mal", "+MAL", "long", seeds=(1234,), steps=600, base=BEFORE),
    Run("mac-600", "titans-mac", "+MAC", "long", seeds=(1234,), steps=600, base=MAC_BEFORE),
    Run(
        "mac-np16-600",
        "titans-mac",
        "+MAC, n_persistent 16",
        "long",
        {"n_persistent": 16},
        (1234,),
        steps=600,
        base=MAC_BEFORE,
    ),
    Run(
        "mal-np16-600",
        "titans-mal",
        "+MAL, n_persistent 16",
        "long",
        {"n_persistent": 16},
        (1234,),
        steps=600,
        base=BEFORE,
    ),
]
# the runs a group's two "×" columns divide by: Transformer++ as shipped and param-matched, at the group's steps
BASELINES = {"long": (None, "transformer-matched-600")}
DEFAULT_BASELINES = ("transformer", "transformer-matched")
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
    config = ModelConfig.from_preset(PRESETS[run.family], **run.model_overrides).to_dict()
    config.pop("name")
    return config
