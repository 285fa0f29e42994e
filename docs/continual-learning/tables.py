"""The tables and the plot of docs/continual-learning/README.md from the runs of run.sh.

    python docs/continual-learning/tables.py runs/cl docs/continual-learning/results

Reads ``<runs>/<model>/`` (checkpoints, TensorBoard), ``<runs>/ppl/*.json`` (hope eval perplexity),
``<runs>/retention/<model>/<method>/retention.json`` and ``<runs>/retention-cap/<run>/retention.json`` (hope eval
retention) and the bench JSON in ``<results>``; writes ``<results>/tables.md``, ``<results>/summary.json``,
``<results>/learning_vs_forgetting.png`` and a copy of every retention report (``<results>/retention/`` and
``<results>/retention-cap/``, a few KB each).

Spread: a perplexity is shown ``± s.e.`` where its report has one (``hope eval perplexity``'s batch-means standard
error, ``ppl * nll_standard_error``; the harness's ``standard_errors``): how far it would move on other text of the
domain. A ratio of two perplexities *of the same text* (a method against no learning, a domain before and after,
one model against another) is paired: ``ratio * se``, with se the standard error of the per-batch differences of
mean NLL (``hope.evaluation.metrics.paired_log_ratio``, 128-token batches), which removes the passages that are
hard for both and is far smaller than either perplexity's own error. The geometric mean over the domains of
per-domain ratios gets ``sqrt(sum se_i^2) / T`` on the log scale.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import torch

from hope.evaluation.metrics import paired_log_ratio
from hope.evaluation.plots import save_figure

MODELS = {
    "transformer": "Transformer++",
    "titans-mac": "Titans MAC",
    "hope": "HOPE",
    "hope-icl": "HOPE, in-context CMS learning in pretraining",
}
METHODS = {
    "finetune": "EpochFinetune",
    "lora": "LoRA",
    "replay": "Replay",
    "dynamic": "DynamicEvaluation",
    "ttl": "TestTimeLearning + consolidation",
}


def model_rows(runs: Path) -> list[dict]:
    """Per model: parameters, validation perplexity after 160 steps and the median training tokens/s."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = []
    for name in MODELS:
        checkpoint = runs / name / "checkpoints" / "last.ckpt"
        if not checkpoint.exists():
            continue
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        events = EventAccumulator(str(sorted((runs / name / "lightning_logs").glob("version_*"))[-1]))
        events.Reload()
        speeds = sorted(e.value for e in events.Scalars("train/tokens_per_sec"))
        rows.append(
            {
                "model": name,
                "parameters": sum(v.numel() for k, v in state.items() if k.startswith("model.")),
                "val_ppl": events.Scalars("val/ppl")[-1].value,
                "train_tokens_per_s": speeds[len(speeds) // 2],
            }
        )
    return rows


def perplexity_rows(runs: Path) -> list[dict]:
    """Every perplexity report: model, domain, mode (none, dyn, ttl), step size, perplexity, tokens, seconds."""
    rows = []
    for path in sorted((runs / "ppl").glob("*.json")):
        report = json.loads(path.read_text())
        model, domain = report["checkpoint"].split("/")[-3], Path(report["source"]).name
        mode, lr = "none", None
        if report.get("dynamic"):
            mode, lr = "dyn", report["dynamic"]["lr"]
        elif report.get("ttl"):
            mode, lr = "ttl-cap" if report["ttl"].get("max_step") else "ttl", report["ttl"]["inner_lr"]
        row = {"model": model, "domain": domain, "mode": mode, "lr": lr}
        se = report.get("nll_standard_error")  # absent from reports made before it existed
        row["se"] = None if se is None else report["token_perplexity"] * se
        row["batches"] = report.get("nll_batch_means")
        rows.append(row | {k: report[k] for k in ("token_perplexity", "tokens", "documents", "seconds")})
    return rows


def retention_rows(runs: Path, results: Path) -> list[dict]:
    """Per model and method: learning, forgetting of domain 1 and the general change, from the R matrix."""
    rows = []
    for model in MODELS:
        for method in METHODS:
            path = runs / "retention" / model / method / "retention.json"
            if path.exists():
                rows.append({"model": model, "method": method, **_retention_summary(path, results / "retention")})
    return rows


def cap_rows(runs: Path, results: Path) -> list[dict]:
    """Stage 5: HOPE's test-time learning with the step cap, the consolidation cap and passes swept."""
    rows = []
    for path in sorted((runs / "retention-cap").glob("*/retention.json")):
        summary = _retention_summary(path, results / "retention-cap")
        rows.append({"model": "hope", "method": "ttl", "run": path.parent.name, **summary})
    return rows


def _retention_summary(path: Path, copy_to: Path) -> dict:
    copy_to.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, copy_to / f"{path.parent.name if copy_to.name == 'retention-cap' else _flat(path)}.json")
    report = json.loads(path.read_text())
    R, initial, T = report["matrix"], report["initial"], len(report["matrix"])
    general = report["general"]
    row = {
        "names": report["task_names"],
        "initial": initial,
        "matrix": R,
        # learning: a new domain's perplexity right after learning it, against before any learning
        "learned_ratio": _geomean([R[i][i] / initial[i] for i in range(T)]),
        "domain1_after": R[-1][0] / R[0][0],  # domain 1 at the end, against right after learning it
        "domain1_vs_start": R[-1][0] / initial[0],
        "general_increase": general["relative_drop"],
        "general": [general["before"], general["after"]],
        "general_se": [general.get("before_standard_error"), general.get("after_standard_error")],
        "seconds": report["seconds"],
        "errors": report.get("standard_errors", {}).get("matrix_with_initial"),  # rows: initial, after each task
    }
    batches = report.get("nll_batch_means")  # [row][task][batch], rows as errors
    if batches is not None:
        log_ses = [_paired_se(batches[i + 1][i], batches[0][i]) for i in range(T)]  # None: one test batch
        row["per_domain"] = [[R[i][i] / initial[i], None if se is None else R[i][i] / initial[i] * se]
                             for i, se in enumerate(log_ses)]  # fmt: skip
        if None not in log_ses:
            row["learned_ratio_se"] = row["learned_ratio"] * math.sqrt(sum(se * se for se in log_ses)) / T
        row["domain1_after_se"] = row["domain1_after"] * _paired_se(batches[-1][0], batches[1][0])
        row["domain1_vs_start_se"] = row["domain1_vs_start"] * _paired_se(batches[-1][0], batches[0][0])
        ratio = general["after"] / general["before"]
        row["general_increase_se"] = ratio * _paired_se(
            general["after_nll_batch_means"], general["before_nll_batch_means"]
        )
    return row


def _paired_se(nll_batches_a: list[float], nll_batches_b: list[float]) -> float:
    return paired_log_ratio(nll_batches_a, nll_batches_b)[1]


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _flat(path: Path) -> str:
    return f"{path.parents[1].name}-{path.parent.name}"


def tables(models: list[dict], ppl: list[dict], retention: list[dict], caps: list[dict], results: Path) -> str:
    """The Markdown tables of the README, in its order."""
    out = [
        "## Models",
        "",
        "| model | parameters | val. ppl (160 steps) | training tokens/s (median) |",
        "|---|---|---|---|",
    ]
    out += [
        f"| {MODELS[r['model']]} | {r['parameters']:,} | {r['val_ppl']:.1f} | {r['train_tokens_per_s']:.0f} |"
        for r in models
    ]
    out += ["", "## Held-out perplexity", "", *_ppl_table(ppl), "", "Step-size grid (info):", "", *_grid_table(ppl)]
    out += ["", "The goal's comparison (relative difference, paired standard error):", "", *_goal_table(ppl)]
    out += ["", "## Four-domain sequence", "", *_retention_table(retention)]
    if caps:
        out += ["", "## Four-domain sequence, HOPE's test-time learning with the caps", "", *_cap_table(caps)]
    out += ["", "Per domain: perplexity right after learning it / before any learning (± paired s.e.):", ""]
    out += _per_domain_table(retention + caps)
    for r in retention + caps:
        title = f"{MODELS[r['model']]}, {METHODS[r['method']]}" + (f" `{r['run']}`" if "run" in r else "")
        out += ["", f"R matrix, {title} (perplexity ± s.e.; rows: after learning):", ""]
        out += ["| after | " + " | ".join(r["names"]) + " |", "|---" * (len(r["names"]) + 1) + "|"]
        errors = r["errors"] or [[None] * len(r["names"])] * (len(r["matrix"]) + 1)
        for label, row, row_se in zip(["(start)", *r["names"]], [r["initial"], *r["matrix"]], errors, strict=True):
            out.append(f"| {label} | " + " | ".join(_pm(v, e) for v, e in zip(row, row_se, strict=True)) + " |")
    for name, render in (("throughput_icl_cpu.json", _throughput_table), ("ttl_gain.json", _gain_table)):
        if (results / name).exists():
            out += ["", *render(json.loads((results / name).read_text()))]
    return "\n".join(out) + "\n"


def _ppl_table(ppl: list[dict]) -> list[str]:
    lines = [
        "| model | domain | no learning | dynamic evaluation | test-time learning | test-time learning, step cap 0.03 "
        "| tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        for domain in ("info", "changelogs"):
            cells = {r["mode"]: r for r in ppl if r["model"] == model and r["domain"] == domain and _chosen(r, ppl)}
            if "none" not in cells:
                continue
            base = cells["none"]["token_perplexity"]
            text = [_pm(base, cells["none"]["se"])] + [
                "-"
                if mode not in cells
                else f"{_pm(cells[mode]['token_perplexity'], cells[mode]['se'])} "
                f"({_pct(*_change(cells[mode], cells['none']), digits=0)}, lr {cells[mode]['lr']:g})"
                for mode in ("dyn", "ttl", "ttl-cap")
            ]
            lines.append(f"| {MODELS[model]} | {domain} | " + " | ".join(text) + f" | {cells['none']['tokens']} |")
    return lines


def _pct(change: float, error: float | None, digits: int = 1) -> str:
    """A relative change ``+12.3% ± 4.5%`` (its paired error), or the change alone."""
    if error is None or math.isnan(change):
        return f"{change:+.{digits}%}"
    return f"{change:+.{digits}%} ± {error:.{digits}%}"


def _pm(value: float, error: float | None, digits: int = 1) -> str:
    """``value ± error``, or the value alone when its report has no standard error."""
    if error is None or math.isnan(value):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ± {error:.{digits}f}"


def _change(a: dict, b: dict) -> tuple[float, float | None]:
    """``ppl_a / ppl_b - 1`` of two perplexity rows on the same text, and its paired standard error."""
    ratio = a["token_perplexity"] / b["token_perplexity"]
    if a["batches"] is None or b["batches"] is None or math.isnan(ratio):
        return ratio - 1, None
    return ratio - 1, ratio * _paired_se(a["batches"], b["batches"])


def _goal_table(ppl: list[dict]) -> list[str]:
    """The goal's first half: HOPE's test-time learning (the better of the plain and the capped step) against
    Transformer++'s dynamic evaluation, and HOPE's dynamic evaluation against it, paired on the same text."""
    lines = ["| domain | HOPE, test-time learning / Transformer++, dynamic evaluation | HOPE, dynamic evaluation / "
             "Transformer++, dynamic evaluation |", "|---|---|---|"]  # fmt: skip
    for domain in ("info", "changelogs"):
        chosen = [r for r in ppl if r["domain"] == domain and _chosen(r, ppl)]
        pick = {(r["model"], r["mode"]): r for r in chosen}
        reference = pick.get(("transformer", "dyn"))
        ttl = [pick[k] for k in (("hope", "ttl"), ("hope", "ttl-cap")) if k in pick]
        if reference is None or not ttl or ("hope", "dyn") not in pick:
            continue
        best = min(ttl, key=lambda r: r["token_perplexity"])
        cells = [_pct(*_change(best, reference)) + f" ({best['mode']})", _pct(*_change(pick["hope", "dyn"], reference))]
        lines.append(f"| {domain} | " + " | ".join(cells) + " |")
    return lines


def _chosen(row: dict, ppl: list[dict]) -> bool:
    """Whether ``row`` is the one reported: on info the best of its grid (a diverged, NaN run never), elsewhere the
    only one."""
    same = [r for r in ppl if (r["model"], r["domain"], r["mode"]) == (row["model"], row["domain"], row["mode"])]
    finite = [r["token_perplexity"] for r in same if not math.isnan(r["token_perplexity"])]
    return row["token_perplexity"] == min(finite) if finite else row is same[0]


def _grid_table(ppl: list[dict]) -> list[str]:
    lines = ["| model | mode | lr: perplexity |", "|---|---|---|"]
    for model in MODELS:
        for mode in ("dyn", "ttl"):
            grid = sorted(
                (r["lr"], r["token_perplexity"])
                for r in ppl
                if (r["model"], r["domain"], r["mode"]) == (model, "info", mode)
            )
            if grid:
                lines.append(f"| {MODELS[model]} | {mode} | " + ", ".join(f"{lr:g}: {p:.1f}" for lr, p in grid) + " |")
    return lines


RETENTION_HEADER = (
    "new domain: ppl after / before learning (geo. mean) | domain 1: end / just learned | domain 1: end / start | "
    "general ppl before → after | seconds |"
)


def _retention_table(retention: list[dict]) -> list[str]:
    lines = ["| model | method | " + RETENTION_HEADER, "|---|---|---|---|---|---|---|"]
    lines += [f"| {MODELS[r['model']]} | {METHODS[r['method']]} | " + _retention_cells(r) for r in retention]
    return lines


def _cap_table(caps: list[dict]) -> list[str]:
    lines = ["| run | " + RETENTION_HEADER, "|---|---|---|---|---|---|"]
    lines += [f"| `{r['run']}` | " + _retention_cells(r) for r in caps]
    return lines


def _retention_cells(r: dict) -> str:
    (before, after), (se_before, se_after) = r["general"], r["general_se"]
    return (
        " | ".join(_pm(r[key], r.get(f"{key}_se"), 3) for key in ("learned_ratio", "domain1_after", "domain1_vs_start"))
        + f" | {_pm(before, se_before)} → {_pm(after, se_after)} "
        f"({_pct(r['general_increase'], r.get('general_increase_se'))}) | {r['seconds']:.0f} |"
    )


def _per_domain_table(rows: list[dict]) -> list[str]:
    rows = [r for r in rows if "per_domain" in r]
    if not rows:
        return []
    lines = [
        "| model | method | " + " | ".join(rows[0]["names"]) + " |",
        "|---|---" + "|---" * len(rows[0]["names"]) + "|",
    ]
    for r in rows:
        label = METHODS[r["method"]] + (f" `{r['run']}`" if "run" in r else "")
        lines.append(
            f"| {MODELS[r['model']]} | {label} | " + " | ".join(_pm(v, e, 3) for v, e in r["per_domain"]) + " |"
        )
    return lines


def _throughput_table(bench: dict) -> list[str]:
    lines = [f"Training throughput (bench/throughput.py, median of {bench['rounds']} rounds):", ""]
    lines += ["| preset | tokens/s | relative |", "|---|---|---|"]
    for r in bench["results"]:
        lines.append(f"| `{r['preset']}` | {r['tokens_per_s']:.0f} | {r['ratio_to_first']:.2f} |")
    return lines


def _gain_table(gain: dict) -> list[str]:
    modes = list(gain["rows"][0]["perplexity"])
    lines = [f"Learning in context on held-out text (bench/ttl_gain.py, {gain['tokens']} tokens):", ""]
    lines += ["| checkpoint | " + " | ".join(modes) + " |", "|---" * (len(modes) + 1) + "|"]
    for r in gain["rows"]:
        base = r["perplexity"]["frozen"]
        cells = [f"{p:.1f} ({p / base - 1:+.1%})" for p in r["perplexity"].values()]
        lines.append(f"| {r['checkpoint'].split('/')[-3]} | " + " | ".join(cells) + " |")
    return lines


def draw(fig, retention: list[dict]) -> None:
    """Learning (new-domain perplexity after / before) against forgetting: of domain 1 (left), general (right)."""
    axes = fig.subplots(1, 2)
    for ax, key, label in (
        (axes[0], "domain1_after", "domain 1 perplexity: end / right after learning it"),
        (axes[1], "general_increase", "general perplexity: relative increase"),
    ):
        for r in retention:
            marker = "o" if r["model"] == "transformer" else "s"
            x = r[key] if key == "general_increase" else r[key] - 1
            ax.errorbar(x, r["learned_ratio"], xerr=r.get(f"{key}_se"), yerr=r.get("learned_ratio_se"), fmt=marker,
                        capsize=2)  # fmt: skip  # paired standard errors, where the report has them
            label_text = f"{r['model']}:{r['method']}" + (f":{r['run']}" if "run" in r else "")
            ax.annotate(label_text, (x, r["learned_ratio"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.axvline(0.1, color="grey", linestyle="--", linewidth=1)  # the goal: at most +10 %
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlabel(label + (" - 1" if key == "domain1_after" else ""))
        ax.set_ylabel("new domain: perplexity after / before learning it")
        ax.grid(True, alpha=0.3)
    fig.suptitle("Learning vs forgetting (down and left is better; dashed: +10 %)", fontsize=10)


def main(runs: str, results: str) -> None:
    """Write the tables, the summary and the plot."""
    runs_path, results_path = Path(runs), Path(results)
    results_path.mkdir(parents=True, exist_ok=True)
    models, ppl, retention = model_rows(runs_path), perplexity_rows(runs_path), retention_rows(runs_path, results_path)
    caps = cap_rows(runs_path, results_path)
    summary = {"models": models, "perplexity": ppl, "retention": retention, "caps": caps, "torch": torch.__version__}
    (results_path / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (results_path / "tables.md").write_text(tables(models, ppl, retention, caps, results_path))
    if retention:
        save_figure(draw, retention + caps, results_path / "learning_vs_forgetting.png", figsize=(11, 4.5))
    print((results_path / "tables.md").read_text())


if __name__ == "__main__":
    main(*sys.argv[1:])
