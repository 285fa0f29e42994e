"""Markdown tables of bench/titans_ablations.py's results, and the README blocks they fill.

``results`` maps (run name, seed) to a result record (``val_ppl``, ``info_ppl``, ``finite``, ``params``, ...).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

from titans_grid import BASELINES, BY_NAME, COLUMNS, DEFAULT_BASELINES, PAPER_CHAIN, RUNS


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


def ratio_cell(results: dict, name: str, column: str, base: str | None = "transformer") -> str:
    """The run's perplexity over the base run's, paired by seed (the same seed is the same data order): the geometric
    mean of the per-seed ratios, ± their sample standard deviation over two or more seeds."""
    if base is None:
        return "—"
    ours = {seed: r[f"{column}_ppl"] for (n, seed), r in results.items() if n == name}
    ratios = [ours[seed] / r[f"{column}_ppl"] for (n, seed), r in results.items() if n == base and seed in ours]
    if not ratios or not all(map(math.isfinite, ratios)):
        return "—"
    mean = math.exp(statistics.fmean(map(math.log, ratios)))
    return f"{mean:.3f} ± {statistics.stdev(ratios):.3f}" if len(ratios) > 1 else f"{mean:.3f}"


def ablation_table(results: dict) -> str:
    head = "| row | override | params | val ppl (default corpus) | info ppl (held out) | × Transformer++ (info) |"
    lines = [head + " × param-matched (info) | paper ppl (Table 5) | finite |", "|" + "---|" * 9]
    for run in (r for r in RUNS if r.group == "ablation"):
        override = ", ".join(f"`{k}: {json.dumps(v)}`" for k, v in run.overrides.items()) or "preset"
        paper = f"{run.paper:.2f}" if run.paper else "—"
        lines.append(
            f"| {run.label} | {override} | {params_cell(results, run.name)} | {cell(results, run.name, 'val')} | "
            f"{cell(results, run.name, 'info')} | {ratio_cell(results, run.name, 'info')} | "
            f"{ratio_cell(results, run.name, 'info', 'transformer-matched')} | {paper} | "
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
    head = "| run | change | val ppl | info ppl | × Transformer++ (info) | × param-matched (info) | finite | train s |"
    lines, (plain, matched) = [head, "|" + "---|" * 8], BASELINES.get(group, DEFAULT_BASELINES)
    for run in (r for r in RUNS if r.group == group):
        seconds = [r["train_seconds"] for (n, _), r in results.items() if n == run.name]
        lines.append(
            f"| `{run.name}` | {run.label} | {cell(results, run.name, 'val')} | {cell(results, run.name, 'info')} | "
            f"{ratio_cell(results, run.name, 'info', plain)} | {ratio_cell(results, run.name, 'info', matched)} | "
            f"{finite_cell(results, run.name)} | {statistics.fmean(seconds):.0f} |"
            if seconds
            else f"| `{run.name}` | {run.label} | — | — | — | — | — | — |"
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


def load_results(out: Path) -> dict[tuple[str, int], dict]:
    """Every ``<out>/results/*.json``, by (run name, seed)."""
    return {(r["name"], r["seed"]): r for r in map(json.loads, map(Path.read_text, out.glob("results/*.json")))}


def write_tables(out: Path) -> None:
    """Fill (or create) ``<out>/README.md``'s generated blocks from the result files."""
    readme = out / "README.md"
    text = readme.read_text() if readme.exists() else "# Titans ablations at debug size\n"
    readme.write_text(fill(text, render(load_results(out))))
