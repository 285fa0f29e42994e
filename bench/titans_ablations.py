"""Titans at debug size (issue 13): the Table 5 ablations, targeted runs on MAC's gap, the variants vs Transformer++.

    python bench/titans_ablations.py --group ablation      # train + evaluate every run of a group (resumes: finished
    python bench/titans_ablations.py --group mac           # runs are skipped), then rewrite the tables
    python bench/titans_ablations.py --tables              # only rewrite the tables from the result JSONs
    python bench/titans_ablations.py --list                # the runs, their overrides and seeds

Every run is ``hope fit --config configs/pretrain/compare/<family>.yaml`` (the shared debug schedule) with
``--trainer.max_steps STEPS`` (the cosine follows it), one validation at the end, the run's model overrides and seed
(``seed_everything`` and ``data.seed``), then two ``hope eval perplexity`` (rolling, window 256 = the training
length, state reset at each window): the default corpus's validation split (all 17 documents, ~64K tokens) and
the first ``--info_docs`` GNU info manual nodes from ``bench/local_corpora.py`` (held-out real text). Each run
writes ``<out>/results/<run>-seed<seed>.json``; the tables go between the ``<!-- BEGIN GENERATED: name -->`` and
``<!-- END GENERATED: name -->`` markers of ``<out>/README.md`` (appended when a marker is missing), so the prose
around them survives a rerun. A run whose resolved model config, seed and steps equal a finished run's reuses it.

Finite: every weight of the last checkpoint is finite and both perplexities are finite (a NaN in training reaches
the weights through AdamW, so a diverged run shows up here).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hope.checkpoint import load_checkpoint_file
from hope.config import ModelConfig
from hope.model import HopeLM

ROOT = Path(__file__).resolve().parents[1]
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


# -- running ----------------------------------------------------------------------------------------------------
def resolved_config(run: Run) -> dict:
    config = ModelConfig.from_preset(PRESETS[run.family], **run.overrides).to_dict()
    config.pop("name")
    return config


def hope(*args: str, log: Path) -> int:
    with log.open("a") as f:
        f.write(f"\n$ hope {' '.join(args)}\n")
        f.flush()
        command = [sys.executable, "-m", "hope.cli", *args]
        return subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode


def evaluate(checkpoint: Path, source: str, out: Path, log: Path, max_documents: int | None) -> dict | None:
    split = ["--split", "val"] if source == "default" else ["--split", "all", "--max_documents", str(max_documents)]
    args = ["eval", "perplexity", "--checkpoint", str(checkpoint), "--source", source, *split]
    if hope(*args, "--window", "256", "--progress", "false", "--out", str(out), log=log) or not out.exists():
        return None
    return json.loads(out.read_text())


def finite_weights(checkpoint: Path) -> bool:
    state = load_checkpoint_file(checkpoint)["state_dict"]
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def train_and_evaluate(run: Run, seed: int, args: argparse.Namespace) -> dict:
    """Train one run with one seed, evaluate it on both sets, and return its result record."""
    run_dir = args.runs_dir / f"{run.name}-seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    log, steps = run_dir / "log.txt", args.steps
    fit = ["fit", "--config", f"configs/pretrain/compare/{run.family}.yaml", "--trainer.default_root_dir", str(run_dir)]
    fit += ["--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps)]
    fit += ["--trainer.num_sanity_val_steps", "0", "--checkpoint.every_n_train_steps", str(steps)]
    fit += ["--seed_everything", str(seed), "--data.seed", str(seed), "--model.overrides", json.dumps(run.overrides)]
    start = time.time()
    fit_rc = hope(*fit, log=log)
    seconds = time.time() - start
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    finite = fit_rc == 0 and checkpoint.exists() and finite_weights(checkpoint)
    reports = {}
    if finite:
        reports["val"] = evaluate(checkpoint, "default", run_dir / "eval-val.json", log, None)
        info = str(args.corpora / "info")
        reports["info"] = evaluate(checkpoint, info, run_dir / "eval-info.json", log, args.info_docs)
    ppl = {k: (r or {}).get("token_perplexity", math.nan) for k, r in reports.items()}
    fit_val = re.findall(r"step \d+: val_loss \S+\s+val_ppl (\S+)", log.read_text())
    model = HopeLM(ModelConfig.from_preset(PRESETS[run.family], **run.overrides))
    return {
        "name": run.name,
        "seed": seed,
        "family": run.family,
        "overrides": run.overrides,
        "steps": steps,
        "tokens": steps * 8 * 256,
        "params": sum(p.numel() for p in model.parameters()),
        "finite": finite and all(math.isfinite(v) for v in ppl.values()) and len(ppl) == 2,
        "fit_returncode": fit_rc,
        "train_seconds": round(seconds, 1),
        "val_ppl": ppl.get("val", math.nan),
        "info_ppl": ppl.get("info", math.nan),
        "fit_val_ppl": float(fit_val[-1]) if fit_val else None,
        "eval_tokens": {k: (r or {}).get("tokens") for k, r in reports.items()},
        "commands": {"fit": "hope " + shlex.join(fit)},
        "machine": f"{platform.machine()}, 2 CPU cores shared with other work, OMP_NUM_THREADS=1",
        "torch": torch.__version__,
        "model_config": resolved_config(run),
    }


def result_path(out: Path, name: str, seed: int) -> Path:
    return out / "results" / f"{name}-seed{seed}.json"


def load_results(out: Path) -> dict[tuple[str, int], dict]:
    return {(r["name"], r["seed"]): r for r in map(json.loads, map(Path.read_text, out.glob("results/*.json")))}


def run_group(group: str, args: argparse.Namespace) -> None:
    if not (args.corpora / "info").exists():
        corpora = [sys.executable, "bench/local_corpora.py", "--out", str(args.corpora), "--domains", "info"]
        subprocess.run(corpora, cwd=ROOT, check=True)
    for run in (r for r in RUNS if r.group == group and (not args.only or r.name in args.only)):
        for seed in run.seeds:
            path = result_path(args.out, run.name, seed)
            if path.exists():
                continue
            done = load_results(args.out).values()
            twin = [
                r
                for r in done
                if (r["model_config"], r["seed"], r["steps"]) == (resolved_config(run), seed, args.steps)
            ]
            result = (
                {**twin[0], "name": run.name, "overrides": run.overrides}
                if twin
                else train_and_evaluate(run, seed, args)
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=2) + "\n")
            print(
                f"{run.name} seed {seed}: val {result['val_ppl']:.2f} info {result['info_ppl']:.2f} "
                f"finite {result['finite']} ({result['train_seconds']:.0f} s)",
                flush=True,
            )
            write_tables(args.out)


# -- tables -------------------------------------------------------------------------------------------------------
def stats(results: dict, name: str, column: str) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one seed) and number of seeds of a run's perplexity."""
    values = [r[f"{column}_ppl"] for (n, _), r in sorted(results.items()) if n == name]
    if not values:
        return math.nan, math.nan, 0
    if not all(map(math.isfinite, values)):  # a diverged seed: no mean to report
        return math.nan, math.nan, len(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)


def cell(results: dict, name: str, column: str) -> str:
    mean, sd, n = stats(results, name, column)
    if n == 0:
        return "—"
    if not math.isfinite(mean):
        return "NaN"
    return f"{mean:.2f} ± {sd:.2f}" if n > 1 else f"{mean:.2f}"


def finite_cell(results: dict, name: str) -> str:
    flags = [r["finite"] for (n, _), r in results.items() if n == name]
    return "—" if not flags else ("yes" if all(flags) else f"**no** ({flags.count(False)}/{len(flags)} diverged)")


def params_cell(results: dict, name: str) -> str:
    params = [r["params"] for (n, _), r in results.items() if n == name]
    return f"{params[0] / 1e6:.2f} M" if params else "—"


def ratio_cell(results: dict, name: str, column: str, base: str = "transformer") -> str:
    mean, _, n = stats(results, name, column)
    ref, _, n_ref = stats(results, base, column)
    return f"{mean / ref:.3f}" if n and n_ref and math.isfinite(mean) else "—"


def ablation_table(results: dict) -> str:
    head = "| row | override | params | val ppl (default corpus) | info ppl (held out) | × Transformer++ (info) |"
    lines = [head + " paper ppl (Table 5) | finite |", "|" + "---|" * 8]
    for run in (r for r in RUNS if r.group == "ablation"):
        override = ", ".join(f"`{k}: {json.dumps(v)}`" for k, v in run.overrides.items()) or "preset"
        paper = f"{run.paper:.2f}" if run.paper else "—"
        lines.append(
            f"| {run.label} | {override} | {params_cell(results, run.name)} | {cell(results, run.name, 'val')} | "
            f"{cell(results, run.name, 'info')} | {ratio_cell(results, run.name, 'info')} | {paper} | "
            f"{finite_cell(results, run.name)} |"
        )
    return "\n".join(lines)


def order_table(results: dict) -> str:
    """Each relation of the paper's Table 5 ordering, and whether our means keep it on each evaluation set (rows
    without results or with a diverged seed are left out)."""
    lines = ["| paper: a < b | paper ppl | " + " | ".join(f"ours, {title}" for _, title in COLUMNS) + " |"]
    lines.append("|" + "---|" * (2 + len(COLUMNS)))
    for a, b in PAPER_CHAIN:
        ours = []
        for column, _ in COLUMNS:
            ma, mb = stats(results, a, column)[0], stats(results, b, column)[0]
            if not (math.isfinite(ma) and math.isfinite(mb)):
                ours.append("—")
            else:
                ours.append(f"{'holds' if ma < mb else '**reversed**'} ({ma:.2f} vs {mb:.2f})")
        paper = f"{BY_NAME[a].paper:.2f} < {BY_NAME[b].paper:.2f}"
        lines.append(f"| {BY_NAME[a].label} < {BY_NAME[b].label} | {paper} | " + " | ".join(ours) + " |")
    pairs = [(a, b) for a in BY_NAME for b in BY_NAME if BY_NAME[a].paper and BY_NAME[b].paper and a < b]
    for column, title in COLUMNS:
        known = [(a, b) for a, b in pairs if all(math.isfinite(stats(results, n, column)[0]) for n in (a, b))]
        agree = sum(
            (BY_NAME[a].paper < BY_NAME[b].paper) == (stats(results, a, column)[0] < stats(results, b, column)[0])
            for a, b in known
        )
        lines.append(f"\nAll {len(known)} pairs of the nine Table 5 rows, {title}: {agree} in the paper's order.")
    return "\n".join(lines)


def targeted_table(results: dict, group: str) -> str:
    lines = ["| run | change | val ppl | info ppl | × Transformer++ (info) | finite | train s |", "|" + "---|" * 7]
    for run in (r for r in RUNS if r.group == group):
        seconds = [r["train_seconds"] for (n, _), r in results.items() if n == run.name]
        lines.append(
            f"| `{run.name}` | {run.label} | {cell(results, run.name, 'val')} | {cell(results, run.name, 'info')} | "
            f"{ratio_cell(results, run.name, 'info')} | {finite_cell(results, run.name)} | "
            f"{statistics.fmean(seconds):.0f} |"
            if seconds
            else f"| `{run.name}` | {run.label} | — | — | — | — | — |"
        )
    return "\n".join(lines)


def render(results: dict) -> dict[str, str]:
    """The generated sections of the README, by marker name."""
    sections = {"ablations": ablation_table(results), "ordering": order_table(results)}
    groups = dict.fromkeys(r.group for r in RUNS if r.group != "ablation")
    return sections | {group: targeted_table(results, group) for group in groups}


def fill(text: str, sections: dict[str, str]) -> str:
    """Replace each ``<!-- BEGIN GENERATED: name -->`` ... ``END`` block of text; append the missing ones."""
    for name, body in sections.items():
        begin, end = f"<!-- BEGIN GENERATED: {name} -->", f"<!-- END GENERATED: {name} -->"
        block = f"{begin}\n{body}\n{end}"
        pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
        match = pattern.search(text)
        text = text[: match.start()] + block + text[match.end() :] if match else f"{text.rstrip()}\n\n{block}\n"
    return text


def write_tables(out: Path) -> None:
    readme = out / "README.md"
    text = readme.read_text() if readme.exists() else "# Titans ablations at debug size\n"
    readme.write_text(fill(text, render(load_results(out))))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group", choices=sorted({r.group for r in RUNS}), help="train and evaluate this group")
    parser.add_argument("--only", nargs="*", help="only these run names of the group")
    parser.add_argument("--tables", action="store_true", help="only rewrite the tables")
    parser.add_argument("--list", action="store_true", help="print the runs and exit")
    parser.add_argument("--steps", type=int, default=150, help="training steps of 8 x 256 tokens per run")
    parser.add_argument("--info_docs", type=int, default=100, help="GNU info nodes scored (~79K tokens)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "titans-ablations")
    parser.add_argument("--runs_dir", type=Path, default=ROOT / "runs" / "titans-ablations")
    parser.add_argument("--corpora", type=Path, default=ROOT / "runs" / "corpora")
    args = parser.parse_args(argv)
    if args.list:
        for run in RUNS:
            print(f"{run.group:10s} {run.name:20s} seeds {list(run.seeds)} {json.dumps(run.overrides)}")
    elif args.group and not args.tables:
        run_group(args.group, args)
    else:
        write_tables(args.out)


if __name__ == "__main__":
    main()
