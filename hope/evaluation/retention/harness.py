"""The sequential-task harness: learn tasks 1..T in order with a method, evaluate every task after each one.

Produces the score matrix ``R[i][j]`` (task j after learning task i; an extra first row is the model before it
learned anything, the baseline ``b`` of forward transfer), the continual-learning summary
(``hope.evaluation.metrics``), a held-out general metric before and after (perplexity on the default corpus's
validation split, bounded; its relative increase is SMF's "NQ drop" analogue), the methods' learning statistics,
TensorBoard scalars, a JSON report, a heatmap of R and per-task curves.

A test set with a ``standard_error(score)`` method (``CandidateRanking``: binomial; ``HeldOutPerplexity``: batch
means over its chunks, delta method) also gets the standard error of every entry of R (``standard_errors`` in the
JSON, "± s.e." in the printed summary), and of the final average (tasks independent: sqrt(sum of squares) / T);
a general set with one gets ``before_standard_error``/``after_standard_error``. Perplexity test sets also give their
per-chunk mean NLLs (``nll_batches``: ``nll_batch_means`` in the JSON, and the general set's ``before_``/
``after_nll_batch_means``), so that two entries on the same text compare paired (``metrics.paired_log_ratio``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from torch import nn
from tqdm.auto import tqdm

from hope.continual.method import ContinualMethod, Task, TestSet
from hope.data.documents import load_documents
from hope.evaluation import metrics
from hope.evaluation.plots import draw_matrix, draw_task_curves, save_figure
from hope.evaluation.retention.tasks import HeldOutPerplexity, TaskSuite
from hope.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def general_perplexity_set(max_tokens: int = 4096, max_documents: int = 8, chunk: int = 128) -> HeldOutPerplexity:
    """Perplexity on the default corpus's validation split (the files ``hope fit`` holds out), bounded."""
    texts = [text for _, text in load_documents("default", "val", max_documents=max_documents)]
    return HeldOutPerplexity(texts, max_tokens=max_tokens, chunk=chunk)


def evaluate_row(model: nn.Module, tokenizer: Tokenizer, method: ContinualMethod, tasks: list[Task]) -> list[float]:
    """One row of R: every task's test score, each under the context the method gives for that task."""
    return [t.test.evaluate(model, tokenizer, method.eval_context(model, t, tokenizer)) for t in tasks]


def run_retention(
    model: nn.Module,
    tokenizer: Tokenizer,
    suite: TaskSuite,
    method: ContinualMethod,
    general: TestSet | None = None,
    writer=None,
    progress: bool = True,
) -> dict:
    """Run the whole sequence and return the report (``write_outputs`` saves it)."""
    started = time.perf_counter()
    tasks = suite.tasks()
    kinds = {(t.test.metric, t.test.higher_is_better) for t in tasks}
    if len(kinds) != 1:
        raise ValueError(f"all tasks of a suite must share one metric, got {sorted(kinds)}")
    (metric, higher), names = kinds.pop(), [t.name for t in tasks]
    model.eval()
    method.setup(model, tokenizer)

    def general_score() -> float | None:
        return (
            None if general is None else general.evaluate(model, tokenizer, method.eval_context(model, None, tokenizer))
        )

    rows, general_scores, stats = [evaluate_row(model, tokenizer, method, tasks)], [general_score()], []
    _log_row(writer, 0, names, metric, rows[0], general_scores[0], general)
    for i, task in enumerate(tqdm(tasks, desc=f"retention ({method.name})", disable=not progress)):
        learn_started = time.perf_counter()
        stats.append(
            {
                "task": task.name,
                **(method.learn(model, task, tokenizer) or {}),
                "seconds": round(time.perf_counter() - learn_started, 3),
            }
        )
        rows.append(evaluate_row(model, tokenizer, method, tasks))
        general_scores.append(general_score())
        _log_row(writer, i + 1, names, metric, rows[-1], general_scores[-1], general, stats[-1])
        log.info("after %s: %s", task.name, ", ".join(f"{n} {v:.4g}" for n, v in zip(names, rows[-1], strict=True)))

    R, baseline = rows[1:], rows[0]
    report = {
        "suite": suite.name,
        "suite_config": suite.config(),
        "method": {"name": method.name, "class": type(method).__qualname__, "config": method.config()},
        "metric": metric,
        "higher_is_better": higher,
        "chance": tasks[0].test.chance,
        "task_names": names,
        "matrix": R,
        "initial": baseline,
        "matrix_with_initial": rows,
        "summary": metrics.continual_summary(R, baseline, higher),
        "learn_stats": stats,
    }
    errors = standard_errors(tasks, rows)
    if errors is not None:
        report["standard_errors"] = errors
    if general is not None:
        report["general"] = {
            "metric": general.metric,
            "set": "default corpus, validation split",
            "before": general_scores[0],
            "after": general_scores[-1],
            "after_each_task": general_scores[1:],
            "relative_drop": metrics.relative_drop(general_scores[0], general_scores[-1], general.higher_is_better),
        }
        if callable(getattr(general, "standard_error", None)):
            report["general"]["before_standard_error"] = general.standard_error(general_scores[0])
            report["general"]["after_standard_error"] = general.standard_error(general_scores[-1])
        if callable(getattr(general, "nll_batches", None)):
            report["general"]["before_nll_batch_means"] = general.nll_batches(general_scores[0])
            report["general"]["after_nll_batch_means"] = general.nll_batches(general_scores[-1])
    if all(callable(getattr(t.test, "nll_batches", None)) for t in tasks):
        report["nll_batch_means"] = [[t.test.nll_batches(v) for t, v in zip(tasks, row, strict=True)] for row in rows]
    report["seconds"] = round(time.perf_counter() - started, 3)
    if writer is not None:
        for key, value in report["summary"].items():
            writer.add_scalar(f"summary/{key}", value, len(tasks))
        if general is not None:
            writer.add_scalar("summary/general_relative_drop", report["general"]["relative_drop"], len(tasks))
        writer.flush()
    return report


def standard_errors(tasks: list[Task], rows: list[list[float]]) -> dict | None:
    """Standard errors of every entry of ``rows`` (R with the initial row) and of the final average, if the tests
    know theirs; None otherwise."""
    if not all(callable(getattr(t.test, "standard_error", None)) for t in tasks):
        return None
    matrix = [[t.test.standard_error(score) for t, score in zip(tasks, row, strict=True)] for row in rows]
    final = None if None in matrix[-1] else sum(e * e for e in matrix[-1]) ** 0.5 / len(tasks)
    return {"matrix_with_initial": matrix, "average_accuracy": final}


def _log_row(writer, step, names, metric, row, general_score, general, stats=None) -> None:
    if writer is None:
        return
    for name, value in zip(names, row, strict=True):
        writer.add_scalar(f"task/{name}/{metric}", value, step)
    writer.add_scalar(f"average/{metric}", sum(row) / len(row), step)
    if general_score is not None:
        writer.add_scalar(f"general/{general.metric}", general_score, step)
    for key, value in (stats or {}).items():
        if isinstance(value, int | float):
            writer.add_scalar(f"learn/{key}", value, step)


def write_outputs(report: dict, out_dir: str | Path) -> dict[str, str]:
    """``retention.json``, ``retention_matrix.png`` and ``retention_curves.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "retention.json"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    for key, draw in (("matrix", draw_matrix), ("curves", draw_task_curves)):
        saved = save_figure(draw, report, out_dir / f"retention_{key}.png")
        if saved is not None:
            paths[key] = saved
    return {k: str(v) for k, v in paths.items()}


def _err(value: float | None) -> str:
    return "?" if value is None else f"{value:.3g}" if value >= 1 else f"{value:.3f}"


def format_summary(report: dict) -> str:
    """A few lines for the terminal: the matrix and the summary."""
    names, metric, errors = report["task_names"], report["metric"], report.get("standard_errors")
    width = max(12 if errors is None else 15, *(len(n) + 2 for n in names))
    lines = [
        f"{report['suite']} / {report['method']['name']}: {metric} (rows: after learning; columns: task)",
        " " * 14 + "".join(n.rjust(width) for n in names),
    ]
    for i, (label, row) in enumerate(zip(["initial", *names], report["matrix_with_initial"], strict=True)):
        cells = [f"{v:.4g}" for v in row]
        if errors is not None:
            cells = [f"{c}±{_err(e)}" for c, e in zip(cells, errors["matrix_with_initial"][i], strict=True)]
        lines.append(f"{label[:13]:<14}" + "".join(c.rjust(width) for c in cells))
    names_in_metric = {"average_accuracy": f"average {metric}", "learning_accuracy": f"just-learned {metric}"}
    lines.append("  ".join(f"{names_in_metric.get(k, k)} {v:.4g}" for k, v in report["summary"].items()))
    if errors is not None:
        kind = "binomial standard error" if metric == "accuracy" else "standard error"
        lines.append(f"(± {kind}; average {metric} ±{_err(errors['average_accuracy'])})")
    if "general" in report:
        g = report["general"]
        lines.append(
            f"general {g['metric']}: {g['before']:.4g} -> {g['after']:.4g} "
            f"(relative {'increase' if g['metric'] == 'perplexity' else 'drop'} {g['relative_drop']:+.3f})"
        )
    return "\n".join(lines)
