"""Compare the continual-learning methods on the synthetic-facts suite of the retention harness (CPU, minutes).

    hope fit --config configs/pretrain/debug.yaml                         # 1. the debug model (runs/debug)
    hope finetune --config configs/finetune/memory-layer.yaml             # 2. + a memory layer in block 2
    python -m hope.evaluation.retention.compare --checkpoint runs/debug-memory/checkpoints/last.ckpt \\
        --out docs/finetune-comparison

Every method starts from the same checkpoint and learns the same tasks in the same order. The checkpoint is the
memory-layer model, as in SMF §5, where every baseline runs on the memory-augmented model. Outputs:

- ``<out>.md``: one table.
- ``<out>.png``: learning against forgetting. Left: general forgetting (relative perplexity increase on the default
  corpus's validation split), SMF's "NQ drop" axis. Right: forgetting of the earlier facts.
- ``<out>.json``: the table's numbers.
- ``<reports>/<method>/``: the harness's full reports and plots.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
from jsonargparse import CLI

from hope.continual.methods import (
    EWC,
    Compose,
    FinetuneMethod,
    FullFinetune,
    GradualUnfreezing,
    InContext,
    LayerwiseLRDecay,
    LoRA,
    Replay,
    SparseMemoryFinetune,
    TaskLoop,
)
from hope.evaluation.loading import load_for_eval
from hope.evaluation.plots import save_figure
from hope.evaluation.retention.facts import SyntheticFacts
from hope.evaluation.retention.harness import format_summary, general_perplexity_set, run_retention, write_outputs


def default_methods(epochs: int, seq_len: int = 128) -> dict:
    """The methods and the settings compared (tuned on the debug model; see docs/finetune-comparison.md)."""

    def loop(lr: float) -> TaskLoop:
        return TaskLoop(lr=lr, epochs=epochs, batch_size=8, seq_len=seq_len)

    return {
        "full": FullFinetune(loop=loop(1e-3)),
        "lora": LoRA(rank=8, alpha=16.0, loop=loop(3e-3)),
        # λ: a task's free drift costs Σ F Δθ² ≈ 5 (Fisher per 128-token sequence); F also covers general data
        "ewc": EWC(lam=5.0, fisher_blocks=16, fisher_source="default", loop=loop(1e-3)),
        "replay": Replay(buffer_ratio=0.25, general_ratio=0.25, general_blocks=128, loop=loop(1e-3)),
        "llrd": LayerwiseLRDecay(decay=0.5, loop=loop(1e-3)),
        "gradual-unfreezing": Compose(
            [GradualUnfreezing(unfreeze_every=2), LayerwiseLRDecay(decay=0.385)], loop=loop(1e-3)
        ),
        # SGD lr swept on task 1 (2 ... 5e4): the debug memory layer's small output needs a large one
        "sparse-memory": SparseMemoryFinetune(top_t=256, background_batches=100, loop=loop(5000.0)),
        "in-context": InContext(),  # the harness's no-update baseline
    }


def compare(
    checkpoint: str,
    out: str = "docs/finetune-comparison",
    reports: str = "runs/finetune-comparison",
    methods: list[str] | None = None,
    suite: SyntheticFacts | None = None,
    epochs: int = 10,
    general_tokens: int = 4096,
    seed: int = 0,
) -> list[dict]:
    """Run every method through ``run_retention`` and write the table, the plot and the reports.

    Args:
        checkpoint: the starting model (the memory-layer model, so that SMF can run).
        out: path prefix of the table and the plot (``.md``, ``.png``, ``.json``).
        reports: folder of the harness's reports, one subfolder per method.
        methods: names from ``default_methods`` to run (default: all).
        suite: the facts suite, ``SyntheticFacts`` with its defaults unless set (``--suite.n_tasks``,
            ``--suite.people_per_task``, ...).
        epochs: passes over each task's text.
        general_tokens: tokens of general text scored before and after (perplexity).
        seed: torch seed.
    """
    start, tokenizer = load_for_eval(checkpoint, device="cpu")
    suite = suite if suite is not None else SyntheticFacts()
    general = general_perplexity_set(general_tokens)
    chosen = default_methods(epochs)
    rows = [
        run_method(name, start, tokenizer, suite, chosen[name], general, seed, Path(reports) / name, checkpoint)[1]
        for name in methods or list(chosen)
    ]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(rows, indent=2) + "\n")
    Path(f"{out}.md").write_text(table(rows, checkpoint, suite) + "\n")
    save_figure(draw_comparison, rows, f"{out}.png", figsize=(10, 4.2))
    return rows


def run_method(
    name: str, start, tokenizer, suite, method, general, seed: int, reports: Path, checkpoint: str
) -> tuple[dict, dict]:
    """``(report, comparison row)`` of ``method`` run from a copy of ``start`` under torch seed ``seed``; the
    harness's report, plots and summary written to ``reports`` and printed."""
    torch.manual_seed(seed)
    model, began = copy.deepcopy(start), time.perf_counter()
    report = run_retention(model, tokenizer, suite, method, general, progress=False)
    report["checkpoint"] = str(checkpoint)
    write_outputs(report, reports)
    print(format_summary(report), flush=True)
    trains = isinstance(method, FinetuneMethod)  # InContext updates no weight
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad) if trains else 0
    return report, summarize(name, report, trained, time.perf_counter() - began)


def summarize(name: str, report: dict, trained: int, seconds: float) -> dict:
    """One comparison row: the report's summary, general perplexity before and after (None if not measured),
    trainable params, seconds."""
    g, s = report.get("general", {}), report["summary"]
    return {
        "method": name,
        "learning_accuracy": s["learning_accuracy"],
        "average_accuracy": s["average_accuracy"],
        "forgetting": s["forgetting"],
        "backward_transfer": s["backward_transfer"],
        "chance": report["chance"],
        "general_before": g.get("before"),
        "general_after": g.get("after"),
        "general_increase": g.get("relative_drop"),
        "trainable_params": trained,
        "seconds": round(seconds, 1),
    }


def table(rows: list[dict], checkpoint: str, suite) -> str:
    """The comparison rows as a Markdown table, under a line naming the starting checkpoint, the suite and chance."""
    head = (
        "| method | learned (acc. right after each task) | final avg. acc. | forgetting of facts | BWT | "
        "general ppl before → after | general ppl increase | trainable params | seconds |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    lines = [
        f"| {r['method']} | {r['learning_accuracy']:.3f} | {r['average_accuracy']:.3f} | {r['forgetting']:.3f} | "
        f"{r['backward_transfer']:+.3f} | {r['general_before']:.2f} → {r['general_after']:.2f} | "
        f"{r['general_increase']:+.1%} | {r['trainable_params']:,} | {r['seconds']} |"
        for r in rows
    ]
    return "\n".join(
        [
            f"Start: `{checkpoint}`; suite: {suite.name} {suite.config()}; chance {rows[0]['chance']:.3f}.\n",
            head,
            *lines,
        ]
    )


def draw_comparison(fig, rows: list[dict]) -> None:
    """Learning against general forgetting (left) and against forgetting of earlier facts (right)."""
    axes = fig.subplots(1, 2)
    for ax, key, label in (
        (axes[0], "general_increase", "general forgetting: relative perplexity increase"),
        (axes[1], "forgetting", "forgetting of earlier facts (accuracy)"),
    ):
        scatter_rows(ax, rows, key, "learning_accuracy")
        if key == "general_increase":
            ax.set_xscale("symlog", linthresh=0.1)  # from +0% (no update) to +1000% (full finetuning)
        ax.axhline(rows[0]["chance"], color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel(label)
        ax.set_ylabel("learned: accuracy right after each task")
        ax.grid(True, alpha=0.3)
    fig.suptitle("Learning vs forgetting (up and left is better; dashed: chance)", fontsize=10)


def scatter_rows(ax, rows: list[dict], x: str, y: str, label: str = "method", errors: str | None = None) -> None:
    """One labelled point per row at ``(row[x], row[y])``, with ``row[errors]`` = (x error, y error) bars if given."""
    for i, r in enumerate(rows):
        xerr, yerr = r[errors] if errors else (None, None)
        ax.errorbar(r[x], r[y], xerr=xerr, yerr=yerr, fmt="o", capsize=3)
        # alternate heights: methods often share a point
        ax.annotate(r[label], (r[x], r[y]), fontsize=8, xytext=(3, 3 + 8 * (i % 2)), textcoords="offset points")


if __name__ == "__main__":
    CLI(compare, as_positional=False)
