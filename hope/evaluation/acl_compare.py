"""The ACL comparison table: ``hope eval in-context-retention`` reports of several runs, grouped by model and
objective, averaged over seeds (``docs/acl/README.md``).

    python -m hope.evaluation.acl_compare runs/acl --out docs/acl

Each run is a folder ``<model>-<objective>-<seed>`` holding ``eval/in_context.json``. The table gives, per model
and objective, mean ± standard error over seeds (over test episodes when there is one seed) of: task 1's accuracy
right after it was shown and after the last task (kept), the learning accuracy (each task right after it was shown),
the average final accuracy (ACC), BWT and forgetting.
It writes ``acl_comparison.md``, ``acl_comparison.json`` and ``acl_comparison.png`` (task 1's accuracy after each
task, one panel per model, both objectives).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hope.evaluation.plots import save_figure

COLUMNS = {
    "task 1 learned": lambda r: r["matrix"][0][0],
    "task 1 kept": lambda r: r["matrix"][-1][0],
    "learning": lambda r: r["summary"]["learning_accuracy"],
    "ACC": lambda r: r["summary"]["average_accuracy"],
    "BWT": lambda r: r["summary"]["backward_transfer"],
    "forgetting": lambda r: r["summary"]["forgetting"],
}
STDERR = {  # the report's own standard error over episodes, used when there is a single seed
    "task 1 learned": lambda r: r["matrix_stderr"][0][0],
    "task 1 kept": lambda r: r["matrix_stderr"][-1][0],
    "learning": lambda r: r["summary_stderr"]["learning_accuracy"],
    "ACC": lambda r: r["summary_stderr"]["average_accuracy"],
    "BWT": lambda r: r["summary_stderr"]["backward_transfer"],
}


def collect(root: Path) -> dict[tuple[str, str], list[dict]]:
    """``{(model, objective): [report per seed]}`` from ``root/<model>-<objective>-<seed>/eval/in_context.json``."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for path in sorted(root.glob("*/eval/in_context.json")):
        model, objective, seed = path.parts[-3].rsplit("-", 2)
        groups.setdefault((model, objective), []).append({**json.loads(path.read_text()), "seed": seed})
    if not groups:
        raise SystemExit(f"no {root}/<model>-<objective>-<seed>/eval/in_context.json found")
    return groups


def summarize(reports: list[dict]) -> dict[str, tuple[float, float | None]]:
    """Column -> (mean, standard error) over seeds, or over the one seed's episodes."""
    out = {}
    for name, read in COLUMNS.items():
        values = np.array([read(r) for r in reports], dtype=float)
        if len(values) > 1:
            out[name] = (float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values))))
        else:
            out[name] = (float(values[0]), STDERR[name](reports[0]) if name in STDERR else None)
    return out


def markdown(rows: dict[tuple[str, str], dict], seeds: dict[tuple[str, str], int], chance: float) -> str:
    """The table, one row per model and objective."""
    lines = [
        f"| model | objective | seeds | {' | '.join(COLUMNS)} |",
        "|---|---|---|" + "---|" * len(COLUMNS),
    ]
    for (model, objective), row in rows.items():
        cells = [f"{m:.3f}" + (f" ± {e:.3f}" if e is not None else "") for m, e in row.values()]
        lines.append(f"| {model} | {objective} | {seeds[model, objective]} | {' | '.join(cells)} |")
    return "\n".join(lines) + f"\n\nChance accuracy: {chance:.3f}.\n"


def draw(fig, data: dict) -> None:
    """Task 1's accuracy after each task was shown: one panel per model, one line per objective."""
    models = sorted({model for model, _ in data["groups"]})
    fig.set_size_inches(3.2 * len(models), 3.4)
    for k, model in enumerate(models):
        ax = fig.add_subplot(1, len(models), k + 1)
        for objective in ("acl", "current"):
            reports = data["groups"].get((model, objective))
            if not reports:
                continue
            curves = np.array([[row[0] for row in r["matrix"]] for r in reports], dtype=float)
            err = curves.std(0, ddof=1) / np.sqrt(len(curves)) if len(curves) > 1 else None
            ax.errorbar(range(1, curves.shape[1] + 1), curves.mean(0), yerr=err, marker="o", label=objective)
        ax.axhline(data["chance"], color="grey", linestyle="--", linewidth=1, label="chance")
        ax.set_xticks(range(1, curves.shape[1] + 1))  # whole tasks, not matplotlib's 1.2, 1.4, ...
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("tasks shown")
        ax.set_title(model, fontsize=9)
        ax.grid(True, alpha=0.3)
        if k == 0:
            ax.set_ylabel("task 1 accuracy")
            ax.legend(fontsize=8)


def main(argv: list[str] | None = None) -> None:
    """Read the runs under ROOT, print the table and write it (markdown, JSON, PNG) to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="folder of <model>-<objective>-<seed> runs")
    parser.add_argument("--out", type=Path, default=Path("docs/acl"), help="where the table and plot go")
    args = parser.parse_args(argv)
    groups = collect(args.root)
    chance = next(iter(groups.values()))[0]["chance"]
    rows = {key: summarize(reports) for key, reports in groups.items()}
    table = markdown(rows, {key: len(reports) for key, reports in groups.items()}, chance)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "acl_comparison.md").write_text(table)
    results = [
        {"model": m, "objective": o, "seeds": [r["seed"] for r in groups[m, o]], **row} for (m, o), row in rows.items()
    ]
    (args.out / "acl_comparison.json").write_text(json.dumps(results, indent=2) + "\n")
    save_figure(draw, {"groups": groups, "chance": chance}, args.out / "acl_comparison.png")


if __name__ == "__main__":
    main()
