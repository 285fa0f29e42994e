"""PNG figures for the evaluation reports (matplotlib, headless). Each function takes a report dict and a path.

matplotlib is an optional dependency (``pip install -e ".[plot]"``); without it ``save_figure`` logs a warning and
the JSON report is still written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def save_figure(draw: Callable, report, path: str | Path, figsize: tuple[float, float] = (7, 4.5)) -> Path | None:
    """Run ``draw(fig, report)`` on a new figure and save it as ``path``; ``None`` if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on servers and in tests
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed; skipping %s (pip install matplotlib)", path)
        return None
    fig = plt.figure(figsize=figsize, dpi=110)
    try:
        draw(fig, report)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def draw_perplexity_by_position(fig, report: dict) -> None:
    """Token perplexity against position in the document (bucket midpoints), log-scaled y."""
    buckets = report["by_position"]["buckets"]
    ax = fig.add_subplot()
    x = [(b["start"] + b["end"]) / 2 for b in buckets]
    # Scored tokens per bucket, faint, behind: the far buckets rest on few (long) documents and are noisier.
    counts = ax.twinx()
    counts.bar(
        x, [b["tokens"] for b in buckets], width=report["by_position"]["bucket_size"] * 0.9, color="grey", alpha=0.15
    )
    counts.set_ylabel("scored tokens per bucket", color="grey")
    ax.set_zorder(counts.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.plot(x, [b["perplexity"] for b in buckets], marker="o", markersize=3)
    ax.set_yscale("log")
    ax.set_xlabel(f"token position in document (buckets of {report['by_position']['bucket_size']})")
    ax.set_ylabel("perplexity")
    if report.get("window"):
        ax.axvline(report["window"], color="grey", linestyle="--", linewidth=1, label=f"window {report['window']}")
        ax.legend()
    name = Path(str(report.get("checkpoint", ""))).name
    ax.set_title(
        f"{name}  {report['protocol']}, state={report['state']}: ppl {report['token_perplexity']:.2f}, "
        f"{report['bits_per_byte']:.3f} bits/byte",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)


def draw_matrix(fig, report: dict) -> None:
    """Heatmap of the retention matrix: rows = after learning task i (row 0: before any), columns = task j."""
    names = report["task_names"]
    R = np.asarray(report["matrix_with_initial"], dtype=float)
    ax = fig.add_subplot()
    cmap = "viridis" if report["higher_is_better"] else "viridis_r"
    im = ax.imshow(R, cmap=cmap, aspect="auto")
    fig.colorbar(im, ax=ax, label=report["metric"])
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(R)), ["initial"] + [f"after {n}" for n in names], fontsize=8)
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("model")
    fmt = "{:.2f}" if R.max() < 10 else "{:.1f}"
    mid = (np.nanmax(R) + np.nanmin(R)) / 2
    for i in range(R.shape[0]):
        for j in range(R.shape[1]):
            dark = (R[i, j] < mid) == report["higher_is_better"]
            ax.text(j, i, fmt.format(R[i, j]), ha="center", va="center", fontsize=8, color="white" if dark else "black")
    summary = report["summary"]
    ax.set_title(
        f"{report['suite']} / {report['method']['name']}: {report['metric']}"
        f"   avg {summary['average_accuracy']:.3g}  BWT {summary['backward_transfer']:+.3g}"
        f"  FWT {summary['forward_transfer']:+.3g}  forgetting {summary['forgetting']:.3g}",
        fontsize=9,
    )


def draw_task_curves(fig, report: dict) -> None:
    """One line per task: its score after each learning step (x = tasks learned so far)."""
    names = report["task_names"]
    R = np.asarray(report["matrix_with_initial"], dtype=float)
    ax = fig.add_subplot()
    for j, name in enumerate(names):
        ax.plot(range(len(R)), R[:, j], marker="o", label=name)
        ax.axvline(j + 1, color=f"C{j % 10}", linestyle=":", linewidth=0.8)  # when task j was learned
    ax.set_xticks(range(len(R)), ["initial"] + [f"after {n}" for n in names], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(report["metric"])
    if not report["higher_is_better"]:
        ax.set_yscale("log")
    if report.get("chance") is not None:
        ax.axhline(report["chance"], color="grey", linestyle="--", linewidth=1, label="chance")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, alpha=0.3)
    general = report.get("general")
    if general is not None:  # the held-out general metric on a second axis: what learning the tasks cost
        other = ax.twinx()
        other.plot(
            range(len(R)),
            [general["before"], *general["after_each_task"]],
            color="black",
            linestyle="--",
            marker="x",
            label=f"general {general['metric']}",
        )
        other.set_ylabel(f"general {general['metric']} (held out)")
        if general["metric"] == "perplexity":
            other.set_yscale("log")
        other.legend(fontsize=8, loc="upper right")
    ax.set_title(f"{report['suite']} / {report['method']['name']}: per-task {report['metric']}", fontsize=9)


def draw_recall(fig, report: dict) -> None:
    """Exact-match and per-token accuracy against context length: one line per needle kind, plus associative
    recall. Per-token accuracy shows partial copying where exact match is still 0."""
    fig.set_size_inches(11, 4.5)
    for col, (key, label) in enumerate(
        [("accuracy", "exact-match accuracy"), ("token_accuracy", "answer-token accuracy")]
    ):
        ax = fig.add_subplot(1, 2, col + 1)
        for kind, rows in report.get("needle", {}).get("by_kind", {}).items():
            lengths = sorted(rows, key=int)
            ax.plot([int(n) for n in lengths], [rows[n][key] for n in lengths], marker="o", label=f"needle: {kind}")
        if report.get("associative"):
            rows = report["associative"]["by_pairs"]
            keys = sorted(rows, key=int)
            ax.plot(
                [rows[k]["context_tokens"] for k in keys],
                [rows[k][key] for k in keys],
                marker="s",
                linestyle="--",
                label="associative recall",
            )
        ax.axvline(report["window"], color="grey", linestyle=":", linewidth=1, label=f"window {report['window']}")
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if col == 0:
            ax.legend(fontsize=8)
    name = Path(str(report.get("checkpoint", ""))).name
    fig.suptitle(f"{name}  long-context recall (greedy, teacher-forced), state={report['state']}", fontsize=10)
