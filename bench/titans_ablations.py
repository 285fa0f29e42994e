"""Titans at debug size (issue 13): the Table 5 ablations, targeted runs on MAC's gap, the variants vs Transformer++.

    python bench/titans_ablations.py --group ablation      # train + evaluate every run of a group (resumes: finished
    python bench/titans_ablations.py --group mac           # runs are skipped), then rewrite the tables
    python bench/titans_ablations.py --group ablation --seeds 1234   # only seed 1234 of each run
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
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from titans_grid import PRESETS, RUNS, Run, resolved_config
from titans_tables import load_results, write_tables

from hope.checkpoint import load_checkpoint_file
from hope.config import ModelConfig
from hope.model import HopeLM

ROOT = Path(__file__).resolve().parents[1]


# -- running ----------------------------------------------------------------------------------------------------
def hope(*args: str, log: Path) -> int:
    with log.open("a") as f:
        f.write(f"\n$ hope {' '.join(args)}\n")
        f.flush()
        command = [sys.executable, "-m", "hope.cli", *args]
        return subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode


def evaluate(checkpoint: Path, source: str, out: Path, log: Path, max_documents: int | None) -> dict:
    split = ["--split", "val"] if source == "default" else ["--split", "all", "--max_documents", str(max_documents)]
    args = ["eval", "perplexity", "--checkpoint", str(checkpoint), "--source", source, *split]
    args += ["--window", "256", "--bucket_size", "64", "--progress", "false", "--out", str(out)]
    out.unlink(missing_ok=True)
    code = hope(*args, log=log)
    if not out.exists():  # hope eval perplexity writes its report before exiting 1 on a NaN: this is an error
        raise RuntimeError(f"hope eval perplexity failed (exit {code}) on {source}, not a divergence: see {log}")
    return json.loads(out.read_text())


def finite_weights(checkpoint: Path) -> bool:
    state = load_checkpoint_file(checkpoint)["state_dict"]
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def evaluations(run_dir: Path, finite: bool, args: argparse.Namespace) -> dict:
    """Both perplexities of a run's last checkpoint (NaN where it diverged), and perplexity by position."""
    checkpoint, log, reports = run_dir / "checkpoints" / "last.ckpt", run_dir / "log.txt", {}
    if finite:
        reports["val"] = evaluate(checkpoint, "default", run_dir / "eval-val.json", log, None)
        info = str(args.corpora / "info")
        reports["info"] = evaluate(checkpoint, info, run_dir / "eval-info.json", log, args.info_docs)
    ppl = {k: r["token_perplexity"] for k, r in reports.items()}
    return {
        "finite": finite and len(ppl) == 2 and all(math.isfinite(v) for v in ppl.values()),
        "val_ppl": ppl.get("val", math.nan),
        "info_ppl": ppl.get("info", math.nan),
        "eval_tokens": {k: r["tokens"] for k, r in reports.items()},
        # perplexity of the document's tokens 0-63, 64-127, 128-191, 192-255 (all in the first window of 256)
        "by_position": {k: [b["perplexity"] for b in r["by_position"]["buckets"][:4]] for k, r in reports.items()},
    }


def train_and_evaluate(run: Run, seed: int, args: argparse.Namespace) -> dict:
    """Train one run with one seed, evaluate it on both sets, and return its result record."""
    run_dir = args.runs_dir / f"{run.name}-seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a run stopped earlier: start it again from scratch
    run_dir.mkdir(parents=True)
    log, steps = run_dir / "log.txt", run.steps or args.steps
    fit = ["fit", "--config", f"configs/pretrain/compare/{run.family}.yaml", "--trainer.default_root_dir", str(run_dir)]
    fit += ["--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps)]
    fit += ["--trainer.num_sanity_val_steps", "0", "--checkpoint.every_n_train_steps", str(steps)]
    fit += ["--seed_everything", str(seed), "--data.seed", str(seed)]
    fit += ["--model.overrides", json.dumps(run.model_overrides)]
    start = time.time()
    fit_rc = hope(*fit, log=log)
    seconds = time.time() - start
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    finite = fit_rc == 0 and checkpoint.exists() and finite_weights(checkpoint)
    fit_val = re.findall(r"step \d+: val_loss \S+\s+val_ppl (\S+)", log.read_text())
    model = HopeLM(ModelConfig.from_preset(PRESETS[run.family], **run.model_overrides))
    return {
        "name": run.name,
        "seed": seed,
        "family": run.family,
        "overrides": run.model_overrides,
        "steps": steps,
        "tokens": steps * 8 * 256,
        "params": sum(p.numel() for p in model.parameters()),
        "fit_returncode": fit_rc,
        "train_seconds": round(seconds, 1),
        "fit_val_ppl": float(fit_val[-1]) if fit_val else None,
        **evaluations(run_dir, finite, args),
        "commands": {"fit": "hope " + shlex.join(fit)},
        "machine": f"{platform.machine()}, 2 CPU cores shared with other work, OMP_NUM_THREADS=1",
        "torch": torch.__version__,
        "model_config": resolved_config(run),
    }


def result_path(out: Path, name: str, seed: int) -> Path:
    return out / "results" / f"{name}-seed{seed}.json"


def run_group(group: str, args: argparse.Namespace) -> None:
    if not (args.corpora / "info").exists():
        corpora = [sys.executable, "bench/local_corpora.py", "--out", str(args.corpora), "--domains", "info"]
        subprocess.run(corpora, cwd=ROOT, check=True)
    for run in (r for r in RUNS if r.group == group and (not args.only or r.name in args.only)):
        for seed in (s for s in run.seeds if not args.seeds or s in args.seeds):
            path = result_path(args.out, run.name, seed)
            if path.exists() and args.reeval:  # evaluate the run's checkpoint again (e.g. after the evals changed)
                old = json.loads(path.read_text())
                run_dir = args.runs_dir / f"{run.name}-seed{seed}"
                result = old | evaluations(run_dir, finite_weights(run_dir / "checkpoints" / "last.ckpt"), args)
            elif path.exists():
                continue
            else:
                steps = run.steps or args.steps
                done = load_results(args.out).values()
                key = (resolved_config(run), seed, steps)
                twin = [r for r in done if (r["model_config"], r["seed"], r["steps"]) == key]
                result = (
                    twin[0] | {"name": run.name, "overrides": run.model_overrides}
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group", choices=sorted({r.group for r in RUNS}), help="train and evaluate this group")
    parser.add_argument("--only", nargs="*", help="only these run names of the group")
    parser.add_argument("--seeds", type=int, nargs="*", help="only these seeds of each run (default: all its seeds)")
    parser.add_argument("--tables", action="store_true", help="only rewrite the tables")
    parser.add_argument("--reeval", action="store_true", help="evaluate the group's finished runs again")
    parser.add_argument("--list", action="store_true", help="print the runs and exit")
    parser.add_argument("--steps", type=int, default=150, help="training steps of 8 x 256 tokens per run")
    parser.add_argument("--info_docs", type=int, default=100, help="GNU info nodes scored (~79K tokens)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "titans-ablations")
    parser.add_argument("--runs_dir", type=Path, default=ROOT / "runs" / "titans-ablations")
    parser.add_argument("--corpora", type=Path, default=ROOT / "runs" / "corpora")
    args = parser.parse_args(argv)
    if args.list:
        for run in RUNS:
            print(f"{run.group:10s} {run.name:20s} seeds {list(run.seeds)} {json.dumps(run.model_overrides)}")
    elif args.group and not args.tables:
        run_group(args.group, args)
    else:
        write_tables(args.out)


if __name__ == "__main__":
    main()
