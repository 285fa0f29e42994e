"""The ladder's scores, table, verdict and plot (``hope.finetune.ladder`` runs the stages; this scores them).

Per run (a stage on a suite under one seed), from the harness's report and the learning curves of ``EpochCurve``:

- per task: its score right after it was learned (``R[j][j]``) and at the end (``R[T-1][j]``);
- composite: the mean final score over the tasks (accuracy), or their geometric mean (perplexity: domains differ
  by factors, so an arithmetic mean is one domain's);
- forgetting (Chaudhry et al.; ``metrics.forgetting``) and BWT, on log perplexity for perplexity suites (nats per
  token), in accuracy points otherwise;
- steps to target: the training steps until a task first reaches ``fraction`` of the gain stage (a) made on it
  (from the checkpoint's score to (a)'s right after learning it, geometrically for perplexity; same seed). The
  curve is probed after every epoch, so a count is a multiple of an epoch's steps; a task that never reaches
  the target counts as not reached.

Over seeds, a row holds the means, the standard error over seeds (n >= 2) and the test sets' own standard error
of the mean composite where the harness reports one (``standard_errors``: binomial for accuracy; for perplexity,
per-entry errors taken to the geometric mean by the delta method). A stage beats the one below it when the
composite difference exceeds twice its standard error, the larger of the two kinds, the stages taken as
independent.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
from torch import nn

from hope.continual.ladder import STAGES
from hope.continual.method import ContinualMethod, Task
from hope.evaluation import metrics
from hope.evaluation.retention.compare import scatter_rows
from hope.tokenizer import Tokenizer

BEGIN, END = "<!-- ladder:begin (written by python -m hope.finetune.ladder) -->", "<!-- ladder:end -->"


class EpochCurve:
    """An epoch probe (``FinetuneMethod.probe_epochs``): the score of the task being learned after every epoch."""

    def __init__(self, method: ContinualMethod, tokenizer: Tokenizer) -> None:
        self.method, self.tokenizer = method, tokenizer
        self.curves: dict[str, list[tuple[int, float]]] = {}

    def __call__(self, model: nn.Module, task: Task, step: int) -> None:
        """Score ``task`` as the harness would, under the method's context."""
        score = task.test.evaluate(model, self.tokenizer, self.method.eval_context(model, task, self.tokenizer))
        self.curves.setdefault(task.name, []).append((step, score))


def score_run(report: dict, curves: dict | None, reference: list[float] | None, fraction: float) -> dict:
    """One run's ladder scores (module docstring). ``reference``: stage (a)'s ``R[j][j]`` (None: no targets)."""
    higher, R = report["higher_is_better"], np.asarray(report["matrix"], dtype=np.float64)
    S = R if higher else np.log(R)  # perplexity: nats per token
    before, rows = report["initial"], report["matrix_with_initial"]
    steps, per_task = [], [s.get("steps") for s in report["learn_stats"]]
    for j, name in enumerate(report["task_names"]):
        target = (
            None if reference is None else metrics.target_score(before[j], reference[j], fraction, higher, not higher)
        )
        curve = [(0, rows[j][j])] + (curves or {}).get(name, [])  # rows[j]: before task j was learned
        steps.append(None if curves is None else metrics.steps_to_target(curve, target, higher))
    errors = report.get("standard_errors")
    return {
        "initial": list(before),
        "learned": np.diag(R).tolist(),
        "final": R[-1].tolist(),
        "composite": float(S[-1].mean()) if higher else math.exp(S[-1].mean()),
        "composite_test_se": composite_error(errors, R[-1], higher),
        "forgetting": metrics.forgetting(S, higher),
        "backward_transfer": metrics.backward_transfer(S, higher),
        "steps_to_target": steps,
        "steps_per_task": per_task,
        "general_before": report.get("general", {}).get("before"),
        "general_after": report.get("general", {}).get("after"),
        "seconds": report["seconds"],
    }


def composite_error(errors: dict | None, final: np.ndarray, higher_is_better: bool) -> float | None:
    """Standard error of the composite from the harness's ``standard_errors`` (None without them): the mean
    accuracy's as reported; for the geometric-mean perplexity G, G * sqrt(sum_j (se_j / ppl_j)^2) / T (tasks
    independent; None if an entry has none)."""
    if errors is None:
        return None
    if higher_is_better:
        return errors["average_accuracy"]
    entries = errors["matrix_with_initial"][-1]
    if None in entries:
        return None
    G = math.exp(np.log(final).mean())
    return G * math.sqrt(sum((e / p) ** 2 for e, p in zip(entries, final, strict=True))) / len(final)


def _mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error over seeds (None for one seed)."""
    return float(np.mean(values)), metrics.mean_standard_error(values)


def aggregate(stage: str, pieces: str, runs: list[dict]) -> dict:
    """A table row: ``runs`` (one ``score_run`` per seed) averaged, with standard errors (module docstring)."""
    row: dict = {"stage": stage, "pieces": pieces, "seeds": len(runs)}
    for key in ("composite", "forgetting", "backward_transfer", "seconds"):
        row[key], row[f"{key}_seed_se"] = _mean_se([r[key] for r in runs])
    for key in ("initial", "learned", "final"):
        row[key] = np.mean([r[key] for r in runs], axis=0).tolist()
    tested = [r["composite_test_se"] for r in runs]
    row["composite_test_se"] = None if None in tested else math.sqrt(sum(e * e for e in tested)) / len(runs)
    kinds = [e for e in (row["composite_seed_se"], row["composite_test_se"]) if e is not None]
    row["composite_se"] = max(kinds) if kinds else None
    reached = [[r["steps_to_target"][j] for r in runs] for j in range(len(row["final"]))]
    row["steps_to_target"] = [None if None in s else float(np.mean(s)) for s in reached]
    row["targets_reached"] = sum(s is not None for r in runs for s in r["steps_to_target"])
    row["targets"] = sum(len(r["steps_to_target"]) for r in runs)
    row["steps_per_task"] = runs[0]["steps_per_task"]
    for key in ("general_before", "general_after"):
        row[key] = None if runs[0][key] is None else float(np.mean([r[key] for r in runs]))
    return row


def verdict(rows: list[dict], higher_is_better: bool) -> list[dict]:
    """Each consecutive pair of rows: the composite difference (positive: the later stage is better), its standard
    error and ``better``/``worse``/``within noise`` (2 s.e.; ``no s.e.`` without one)."""
    pairs = []
    for low, high in zip(rows, rows[1:], strict=False):
        diff = (high["composite"] - low["composite"]) * (1 if higher_is_better else -1)
        se = (
            None
            if None in (low["composite_se"], high["composite_se"])
            else math.hypot(*(r["composite_se"] for r in (low, high)))
        )
        call = "no s.e." if se is None else "better" if diff > 2 * se else "worse" if diff < -2 * se else "within noise"
        pairs.append({"pair": f"({low['stage']}) < ({high['stage']})", "difference": diff, "se": se, "call": call})
    return pairs


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pm(value: float, se: float | None, digits: int = 3) -> str:
    return f"{value:.{digits}f}" + ("" if se is None else f" ± {se:.{digits}f}")


def suite_table(suite: dict) -> str:
    """Markdown: one row per stage (module docstring), then the verdict on the chain (a) < ... < (e)."""
    ppl, digits = not suite["higher_is_better"], 1 if not suite["higher_is_better"] else 3
    unit, before = "nats/token" if ppl else "accuracy", ", ".join(f"{v:.{digits}f}" for v in suite["initial"])
    lines = [
        f"**{suite['name']}** ({suite['metric']}, {'lower' if ppl else 'higher'} is better; tasks "
        f"{', '.join(suite['task_names'])}; before learning (mean over seeds): {before}"
        + ("" if suite.get("chance") is None else f"; chance {suite['chance']:.3f}")
        + f"; target: {suite['target_fraction']:.0%} of (a)'s gain)\n",
        f"| stage | pieces | per task: just learned → final | composite ± s.e. | forgetting ({unit}) | "
        "BWT | steps to target (per task; reached) | steps per task | general ppl before → after | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in suite["rows"]:
        tasks = ", ".join(f"{a:.{digits}f} → {b:.{digits}f}" for a, b in zip(r["learned"], r["final"], strict=True))
        steps = ", ".join("-" if s is None else f"{s:.0f}" for s in r["steps_to_target"])
        general = "-" if r["general_before"] is None else f"{r['general_before']:.1f} → {r['general_after']:.1f}"
        lines.append(
            f"| ({r['stage']}) | {r['pieces']} | {tasks} | {_pm(r['composite'], r['composite_se'], digits)} | "
            f"{_pm(r['forgetting'], r['forgetting_seed_se'])} | {r['backward_transfer']:+.3f} | {steps} "
            f"({r['targets_reached']}/{r['targets']}) | {', '.join(_number(s, 0) for s in r['steps_per_task'])} | "
            f"{general} | {r['seconds']:.0f} |"
        )
    chain = verdict([r for r in suite["rows"] if r["stage"] in STAGES], suite["higher_is_better"])
    calls = "; ".join(f"{p['pair']}: {p['difference']:+.3f} ± {_number(p['se'])} ({p['call']})" for p in chain)
    held = bool(chain) and all(p["call"] == "better" for p in chain)
    lines += ["", f"(a) < (b) < (c) < (d) < (e) on the composite: **{'held' if held else 'did not hold'}** ({calls})."]
    return "\n".join(lines)


def draw_ladder(fig, results: dict) -> None:
    """Learning (just-learned score) against forgetting, one panel per suite, one point per stage (± s.e.)."""
    suites = list(results["suites"].values())
    for ax, suite in zip(np.atleast_1d(fig.subplots(1, len(suites))), suites, strict=True):
        ppl = not suite["higher_is_better"]
        points = [
            {
                "label": f"({r['stage']})" + (", HOPE" if r["stage"] == "ttl" else ""),
                "forgetting": r["forgetting"],
                "learned": math.exp(np.mean(np.log(r["learned"]))) if ppl else float(np.mean(r["learned"])),
                "errors": (r["forgetting_seed_se"], None),
            }
            for r in suite["rows"]
        ]
        scatter_rows(ax, points, "forgetting", "learned", label="label", errors="errors")
        if ppl:
            ax.invert_yaxis()  # up is better in both panels
        ax.set_xlabel(f"forgetting ({'nats/token' if ppl else 'accuracy'}; left is better)")
        ax.set_ylabel(f"just learned: {'geo. mean perplexity' if ppl else 'mean accuracy'} (up is better)")
        ax.set_title(suite["title"], fontsize=9)
        ax.grid(True, alpha=0.3)
    fig.suptitle("The ladder: learning vs forgetting (± s.e. over seeds)", fontsize=10)


def write_section(path: Path, section: str) -> None:
    """Put ``section`` between the ladder markers of ``path`` (appended, with the markers, if it has none)."""
    text = path.read_text() if path.exists() else "# The five-pieces ladder\n"
    block = f"{BEGIN}\n{section}\n{END}"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
