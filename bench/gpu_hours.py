"""Expected GPU-hours of the papers' runs (configs/pretrain/paper/*.yaml), from the tokens/s measured on one H100.

    python bench/gpu_hours.py                  # prints the Markdown table of slurm/README.md
    python bench/gpu_hours.py --out bench/results/gpu_hours_h100.json

Measured (bench/throughput.py, one H100 80 GB, bf16-mixed, seq 2048 x batch 8, the PyTorch memory ops):
bench/results/throughput_h100_bf16.json (Transformer++ 170M / 340M / 760M) and throughput_h100_families_bf16.json
(Titans MAC / MAG / MAL / LMM and Hope-Attention at 170M); HOPE 170M: 3.3K tokens/s at seq 1024 x 8 through
``hope fit`` (README, "HOPE on a GPU: measured"; it did not fit at 2048 x 8).

A run's tokens/s is that measurement where the preset and sequence length were measured, and otherwise
extrapolated at constant model-FLOPs utilisation (MFU, ``bench/throughput.py``'s FLOPs per token, which grow with
the parameters and, through attention, with the sequence length):

    tokens/s = (MFU of the family at 170M / MFU of Transformer++ at 170M)
               * (MFU of the Transformer++ measured nearest in size) * 989 TFLOPs / (FLOPs per token of the run)

so a Titans or HOPE run keeps, at every size, the utilisation ratio to Transformer++ measured at 170M. Every run is
assumed to scale perfectly over data-parallel GPUs. The numbers are what the current code costs, before the
Triton kernels and recompute options of bench/gpu_check.sh are measured: re-run this after adding its results.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from throughput import flops_per_token  # bench/throughput.py, beside this script

from hope.config import ModelConfig
from hope.model import HopeLM

PEAK = 989e12  # H100 SXM dense bf16
RESULTS = Path(__file__).parent / "results"
HOPE_170M = {"preset": "hope-170m", "seq_len": 1024, "tokens_per_s": 3300.0}  # README: HOPE on a GPU, measured
TRANSFORMERS = ("transformer-170m", "transformer-340m", "transformer-760m")
RUNS = [  # (config name, tokens): configs/pretrain/paper/<name>.yaml
    *[(f"{f}-340m", 15e9) for f in ("transformer", "titans-mac", "titans-mag", "titans-mal", "titans-lmm", "hope")],
    *[(f"{f}-400m", 15e9) for f in ("titans-mac", "titans-mag", "titans-mal", "titans-lmm")],
    *[(f"{f}-760m", 30e9) for f in ("transformer", "titans-mac", "titans-mag", "titans-mal", "titans-lmm", "hope")],
    *[(f"{f}-1.3b", 100e9) for f in ("transformer", "hope")],
]
SEQ_LEN = 4096  # the papers' training length


def flops(preset: str, seq_len: int) -> float:
    """FLOPs per token of a preset (a model built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        return flops_per_token(HopeLM(ModelConfig.from_preset(preset, max_seq_len=max(seq_len, 4096))), seq_len)


def measured() -> dict[tuple[str, int], float]:
    """(preset, seq_len) -> tokens/s of the H100 measurements."""
    rows = [HOPE_170M]
    for name in ("throughput_h100_bf16.json", "throughput_h100_families_bf16.json"):
        rows += json.loads((RESULTS / name).read_text())["results"]
    return {(r["preset"], r["seq_len"]): r["tokens_per_s"] for r in rows if r.get("tokens_per_s")}


def mfu(rates: dict, preset: str, seq_len: int) -> float:
    """Model-FLOPs utilisation of a measured (preset, seq_len)."""
    return rates[preset, seq_len] * flops(preset, seq_len) / PEAK


def expected(rates: dict, name: str, seq_len: int) -> tuple[float, str]:
    """tokens/s of a run of preset ``name`` and how it was obtained."""
    if (name, seq_len) in rates:
        return rates[name, seq_len], "measured"
    family, size = name.rsplit("-", 1)
    anchor = next((p, s) for p, s in rates if p == f"{family}-170m")
    ratio = mfu(rates, *anchor) / mfu(rates, "transformer-170m", 2048)
    millions = lambda s: float(s.rstrip("mb")) * (1000 if s.endswith("b") else 1)  # noqa: E731  "1.3b" -> 1300
    nearest = min(TRANSFORMERS, key=lambda t: abs(millions(t.rsplit("-", 1)[1]) - millions(size)))
    rate = ratio * mfu(rates, nearest, 2048) * PEAK / flops(name, seq_len)
    how = f"{nearest} MFU" + ("" if family == "transformer" else f" x {family}-170m / transformer-170m")
    return rate, f"extrapolated ({how})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    rates, rows = measured(), []
    for name, tokens in RUNS:
        rate, how = expected(rates, name, SEQ_LEN)
        hours = tokens / rate / 3600
        rows.append({"run": name, "tokens": tokens, "tokens_per_s": rate, "source": how, "gpu_hours": hours})
    print("| run (configs/pretrain/paper/) | tokens | tokens/s per H100 | source | GPU-hours | days on 8 GPUs |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['run']} | {r['tokens'] / 1e9:.0f}B | {r['tokens_per_s']:,.0f} | {r['source']} | "
            f"{r['gpu_hours']:,.0f} | {r['gpu_hours'] / 8 / 24:,.1f} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"peak_flops": PEAK, "seq_len": SEQ_LEN, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
