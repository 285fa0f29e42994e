"""Merge ``bench/throughput.py`` results (one JSON per size) into one JSON and a Markdown table.

    python bench/gpu_table.py --name h100 --command "bash bench/gpu_check.sh" OUT_DIR a.json b.json

Writes OUT_DIR/throughput_<name>.json (device, torch version, command and every row) and
OUT_DIR/throughput_<name>.md: tokens/s, the ratio to the Transformer++ row of the same size (each file's first
row), MFU and peak memory, one row per preset and size. ``bench/gpu_check.sh`` runs it last.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def table(runs: list[dict]) -> str:
    """Markdown rows of every run's results, ratios to the run's first row."""
    lines = [
        "| preset | seq x batch | tokens/s | x Transformer++ | MFU | peak GiB |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        for r in run["results"]:
            shape = f"{r['seq_len']} x {r['batch_size']}"
            if "error" in r:
                lines.append(f"| {r['preset']} | {shape} | {r['error']} | - | - | - |")
                continue
            ratio = f"{r['ratio_to_first']:.2f}" if "ratio_to_first" in r else "-"
            mfu = "-" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
            peak = "-" if r.get("peak_mem_GiB") is None else f"{r['peak_mem_GiB']:.1f}"
            lines.append(f"| {r['preset']} | {shape} | {r['tokens_per_s']:,.0f} | {ratio} | {mfu} | {peak} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="short device name for the file names, e.g. h100")
    parser.add_argument("--command", required=True, help="the command that made the results, recorded beside them")
    parser.add_argument("out_dir")
    parser.add_argument("runs", nargs="+", help="bench/throughput.py JSON files")
    args = parser.parse_args()
    runs = [json.loads(Path(path).read_text()) for path in args.runs]
    out = Path(args.out_dir)
    merged = {
        "device": runs[0]["device"],
        "torch": runs[0]["torch"],
        "command": args.command,
        "results": [r for run in runs for r in run["results"]],
    }
    (out / f"throughput_{args.name}.json").write_text(json.dumps(merged, indent=2))
    header = f"{merged['device']}, torch {merged['torch']}, `{args.command}`\n\n"
    (out / f"throughput_{args.name}.md").write_text(header + table(runs) + "\n")
    print(header + table(runs))


if __name__ == "__main__":
    main()
