"""The five-pieces ladder as one command (issue 16, point 4): stages (a)-(e) on the same tasks, seeds and loop.

    python -m hope.finetune.ladder --checkpoint runs/cl/transformer/checkpoints/last.ckpt \\
        --hope_checkpoint runs/cl/hope/checkpoints/last.ckpt --seeds '[0, 1]' \\
        --study_policy docs/five-pieces/study_policy/policy.json \\
        --domains.paths '[corpora/info, corpora/changelogs, corpora/locales, corpora/vim]' \\
        --domains.train_tokens 2048 --domains.test_tokens 512 --domains.max_file_chars 2000

The stages are ``hope.continual.ladder``'s: (a) naive finetuning, (b) LoRA, (c) + replay, (d) + layer-wise lr
decay, (e) + gap-focused self-study and the learned study strategy. Each runs through the retention harness
(``run_retention``) on every suite, from a copy of ``--checkpoint``, once per seed (torch seed, text order,
replay draws and, for the facts, the suite's seed); the task being learned is scored after every epoch for the
steps to target. ``--hope_checkpoint`` adds HOPE's own test-time learning (``TestTimeLearning``, consolidated
after each task) as one more row. Writes, under ``--out``: ``ladder.json`` (every row and run), ``ladder.png``
(learning vs forgetting) and the generated section of ``README.md``; the harness's reports under
``--reports/<suite>/<stage>/seed<k>/``. Scores and the verdict: ``hope.evaluation.retention.ladder_report``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from jsonargparse import CLI
from torch import nn

from hope.continual.ladder import STAGES, LadderSettings, build_stage, describe, study_piece
from hope.continual.methods import TestTimeLearning
from hope.evaluation.loading import load_for_eval
from hope.evaluation.plots import save_figure
from hope.evaluation.retention import LocalDomains, SyntheticFacts
from hope.evaluation.retention.compare import run_method
from hope.evaluation.retention.harness import general_perplexity_set
from hope.evaluation.retention.ladder_report import (
    EpochCurve,
    aggregate,
    draw_ladder,
    score_run,
    suite_table,
    write_section,
)
from hope.evaluation.retention.tasks import HeldOutPerplexity
from hope.online import TTLConfig
from hope.tokenizer import Tokenizer

SUITES = ("facts", "domains")
TTL = TTLConfig(inner_lr=0.03, max_step=0.03, consolidate=True, max_change=0.05)  # docs/continual-learning


def check_arguments(suite, domains, stages, seeds, study_policy, target_fraction, hope_checkpoint) -> None:
    """Raise, naming the field and the fix, on arguments the ladder cannot run."""
    if not suite or any(s not in SUITES for s in suite):
        raise ValueError(f"--suite {suite}: choose one or more of {list(SUITES)}")
    if "domains" in suite and domains is None:
        raise ValueError(
            "--suite domains needs --domains.paths '[dir_a, dir_b, ...]' (LocalDomains folders of real text, e.g. "
            "built by bench/local_corpora.py), or --suite '[facts]'"
        )
    if not stages or any(s not in STAGES for s in stages):
        raise ValueError(f"--stages {stages}: choose from {list(STAGES)}, in order, (a) first (the targets need it)")
    if stages[0] != "a":
        raise ValueError(f"--stages {stages}: stage a must run (steps to target are shares of (a)'s gain)")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {seeds}: give one or more distinct seeds, e.g. '[0, 1]'")
    if not 0 < target_fraction <= 1:
        raise ValueError(f"--target_fraction {target_fraction} must be in (0, 1]")
    if study_policy is not None and not Path(study_policy).exists():
        raise ValueError(f"--study_policy {study_policy!r} does not exist")
    if study_policy is not None:
        study_piece(study_policy)  # a policy file that does not load fails here, before any training
    if hope_checkpoint is not None and not Path(hope_checkpoint).exists():
        raise ValueError(f"--hope_checkpoint {hope_checkpoint!r} does not exist (leave it out to skip the TTL row)")


def ladder(
    checkpoint: str,
    suite: list[str] | None = None,
    facts: SyntheticFacts | None = None,
    domains: LocalDomains | None = None,
    settings: LadderSettings | None = None,
    stages: list[str] | None = None,
    seeds: list[int] | None = None,
    hope_checkpoint: str | None = None,
    ttl: TTLConfig | None = None,
    study_policy: str | None = None,
    target_fraction: float = 0.8,
    general_tokens: int = 1024,
    out: str = "docs/five-pieces",
    reports: str = "runs/ladder",
) -> dict:
    """Run the ladder and write its table, plot and JSON (module docstring).

    Args:
        checkpoint: the model every stage starts from.
        suite: suites to run, of ``facts`` (``SyntheticFacts``) and ``domains`` (``LocalDomains``); default both.
        facts: the facts suite (default: 3 tasks of 16 people, 192 questions; its seed is each run's seed).
        domains: the real-text domain sequence (``--domains.paths``, required with suite ``domains``).
        settings: the shared loop and each piece's settings (``hope.continual.ladder.LadderSettings``).
        stages: stages to run, of ``a``-``e`` (default all; ``a`` is needed for the targets).
        seeds: one run per seed; two or more give standard errors over seeds.
        hope_checkpoint: a HOPE checkpoint for the extra row of HOPE's test-time learning (None: no row).
        ttl: that row's test-time learning (default: the flags that worked on HOPE, docs/continual-learning).
        study_policy: the learned study strategy for stage (e) (None: GapStudy without learned notes).
        target_fraction: steps to target count the steps to this share of (a)'s gain on a task.
        general_tokens: tokens of the default corpus's validation split scored before and after (0: none).
        out: folder of ``ladder.json``, ``ladder.png`` and ``README.md``'s generated section.
        reports: folder of the harness's reports.
    """
    suite, stages, seeds = suite or list(SUITES), stages or list(STAGES), seeds if seeds is not None else [0]
    check_arguments(suite, domains, stages, seeds, study_policy, target_fraction, hope_checkpoint)
    settings = settings or LadderSettings()
    start, tokenizer = load_for_eval(checkpoint, device="cpu")
    hope = load_for_eval(hope_checkpoint, device="cpu") if hope_checkpoint else None
    if hope is None:
        print("[ladder] no --hope_checkpoint: the HOPE test-time-learning row is skipped", flush=True)
    if study_policy is None and "e" in stages:
        print("[ladder] no --study_policy: stage (e) runs GapStudy without a learned study strategy", flush=True)
    general = general_perplexity_set(general_tokens) if general_tokens > 0 else None
    results = {
        "checkpoint": checkpoint,
        "hope_checkpoint": hope_checkpoint,
        "command": "python -m hope.finetune.ladder " + shlex.join(sys.argv[1:]),
        "machine": f"{os.cpu_count()} CPU cores; torch {torch.__version__}; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "settings": dataclasses.asdict(settings),
        "seeds": seeds,
        "study_policy": study_policy,
        "suites": {},
    }
    run = LadderRun(
        start, tokenizer, hope, settings, stages, seeds, study_policy, ttl or TTL, general, checkpoint, hope_checkpoint
    )
    for name in suite:
        chosen = (facts or SyntheticFacts(n_tasks=3, people_per_task=16)) if name == "facts" else domains
        results["suites"][name] = run_suite(name, chosen, run, target_fraction, Path(reports) / name)
    write_results(results, Path(out))
    return results


def seeded(suite, seed: int):
    """The suite for ``seed``: the facts drawn anew per seed, a domain sequence as it is (its split is fixed)."""
    return SyntheticFacts(**{**suite.config(), "seed": seed}) if isinstance(suite, SyntheticFacts) else suite


@dataclass
class LadderRun:
    """What every suite's stages share: the starting models (``hope``: the HOPE model and tokenizer, or None),
    the settings and the general held-out set."""

    start: nn.Module
    tokenizer: Tokenizer
    hope: tuple[nn.Module, Tokenizer] | None
    settings: LadderSettings
    stages: list[str]
    seeds: list[int]
    study_policy: str | None
    ttl: TTLConfig
    general: HeldOutPerplexity | None
    checkpoint: str
    hope_checkpoint: str | None


def suite_config(suite) -> dict:
    """The suite's options as the table states them: the facts' seed is each run's."""
    return {**suite.config(), "seed": "each run's"} if isinstance(suite, SyntheticFacts) else suite.config()


def run_suite(name: str, suite, run: LadderRun, fraction: float, reports: Path) -> dict:
    """Every stage (and the TTL row) on one suite, every seed; the suite's rows and runs."""
    runs: dict[str, list[dict]] = {}
    reference: dict[int, list[float]] = {}
    study = bool(suite.tasks()[0].study)
    for stage in run.stages:
        if stage == "e" and not study and "d" in runs:
            print(f"[ladder] {name} (e): the suite has no study items, so (e) is (d); its runs are (d)'s", flush=True)
            runs["e"] = runs["d"]
            continue
        for seed in run.seeds:
            method = build_stage(stage, run.settings, seed, study, run.study_policy)
            curve = EpochCurve(method, run.tokenizer)
            method.probe_epochs(curve)
            print(f"[ladder] {name} ({stage}) {method.name}, seed {seed}", flush=True)
            report, _ = run_method(
                method.name, run.start, run.tokenizer, seeded(suite, seed), method, run.general, seed,
                reports / stage / f"seed{seed}", run.checkpoint,
            )  # fmt: skip
            reference.setdefault(seed, [report["matrix"][j][j] for j in range(len(report["matrix"]))])
            runs.setdefault(stage, []).append(score_run(report, curve.curves, reference[seed], fraction))
    rows = [aggregate(s, describe(s, study, run.study_policy), runs[s]) for s in run.stages]
    if run.hope is not None:
        runs["ttl"], row = ttl_row(name, suite, run, fraction, reports / "ttl")
        rows.append(row)
    return {
        "name": f"{name}: {type(suite).__name__} {suite_config(suite)}",
        "title": f"{name} ({type(suite).__name__})",
        "metric": report["metric"],
        "higher_is_better": report["higher_is_better"],
        "chance": report["chance"],
        "task_names": report["task_names"],
        "initial": rows[0]["initial"],
        "target_fraction": fraction,
        "rows": rows,
        "runs": runs,
    }


def ttl_row(name: str, suite, run: LadderRun, fraction: float, reports: Path) -> tuple[list[dict], dict]:
    """HOPE's test-time learning on ``suite``, every seed: the runs and their row (no epochs, no steps to target)."""
    runs = []
    for seed in run.seeds:
        print(f"[ladder] {name} (ttl) HOPE test-time learning, seed {seed}", flush=True)
        method = TestTimeLearning(run.ttl)
        report, _ = run_method(
            "ttl", *run.hope, seeded(suite, seed), method, run.general, seed, reports / f"seed{seed}",
            run.hope_checkpoint,
        )  # fmt: skip
        runs.append(score_run(report, None, None, fraction))
    before = ", ".join(f"{v:.3g}" for v in report["initial"])
    return runs, aggregate("ttl", f"HOPE test-time learning (HOPE checkpoint; before: {before})", runs)


def write_results(results: dict, out: Path) -> None:
    """``ladder.json``, ``ladder.png`` and the generated section of ``README.md`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "ladder.json").write_text(json.dumps(results, indent=2) + "\n")
    save_figure(draw_ladder, results, out / "ladder.png", figsize=(5 * len(results["suites"]), 4.2))
    section = [
        f"Command: `{results['command']}`\n",
        f"Start: `{results['checkpoint']}`; seeds {results['seeds']}; machine: {results['machine']}; "
        f"loop and pieces: `{results['settings']}`; study policy: {results['study_policy'] or 'none'}.\n",
        *(suite_table(s) + "\n" for s in results["suites"].values()),
    ]
    write_section(out / "README.md", "\n".join(section))
    print(f"[ladder] wrote {out / 'ladder.json'}, {out / 'ladder.png'}, {out / 'README.md'}", flush=True)


if __name__ == "__main__":
    CLI(ladder, as_positional=False)
