"""Training throughput of model presets: tokens/s, peak memory and (on GPUs) MFU, on synthetic tokens.

    python bench/throughput.py --presets debug --seq_len 256 --batch_size 8              # CPU
    python bench/throughput.py --presets transformer-170m --seq_len 2048 --batch_size 8 --device cuda --precision bf16

One training step = forward, next-token loss, backward, AdamW step: what `hope fit` does per micro-batch, without
data loading. MFU counts 6 * (non-embedding parameters) + 12 * n_layer * seq_len * d_attn FLOPs per token (the
PaLM appendix B formula) against the device's dense bf16 peak (--peak_tflops). Prints a markdown table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch

from hope.config import ModelConfig
from hope.lit.module import next_token_loss
from hope.model import HopeLM


def flops_per_token(model: HopeLM, seq_len: int) -> float:
    cfg = model.config
    matmul_params = model.num_parameters(exclude_embeddings=True)
    attention = 12 * cfg.n_layer * seq_len * cfg.n_head * cfg.resolved_head_dim
    return 6 * matmul_params + attention


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB: process peak RSS


def measure(preset: str, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = HopeLM(ModelConfig.from_preset(preset, max_seq_len=max(args.seq_len, 16))).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    tokens = torch.randint(0, model.config.vocab_size, (args.batch_size, args.seq_len + 1), device=device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.precision]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits, _ = model(tokens[:, :-1])
        loss = next_token_loss(logits, tokens[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    tokens_per_sec = args.batch_size * args.seq_len / seconds
    achieved = tokens_per_sec * flops_per_token(model, args.seq_len)
    mfu = achieved / (args.peak_tflops * 1e12) if args.peak_tflops else None
    return {
        "preset": preset,
        "params_M": model.num_parameters() / 1e6,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "step_s": seconds,
        "tokens_per_s": tokens_per_sec,
        "mfu": mfu,
        "peak_mem_GiB": peak_memory_gib(device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["debug"])
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="fp32")
    parser.add_argument("--peak_tflops", type=float, default=None, help="dense peak of the device (H100 SXM bf16: 989)")
    parser.add_argument("--out", default="bench/results/throughput.json")
    args = parser.parse_args()
    device = torch.device(args.device)

    rows = []
    for preset in args.presets:
        try:
            rows.append(measure(preset, args, device))
        except torch.OutOfMemoryError:  # a row that says so beats losing the rest of the table
            rows.append({"preset": preset, "error": "out of memory", "seq_len": args.seq_len,
                         "batch_size": args.batch_size, "precision": args.precision})
            torch.cuda.empty_cache()
    print("| preset | params | seq | batch | prec | step s | tokens/s | MFU | peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['preset']} | - | {r['seq_len']} | {r['batch_size']} | {r['precision']} | {r['error']} |||||")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        print(f"| {r['preset']} | {r['params_M']:.1f}M | {r['seq_len']} | {r['batch_size']} | {r['precision']} | "
              f"{r['step_s']:.3f} | {r['tokens_per_s']:,.0f} | {mfu} | {r['peak_mem_GiB']:.2f} |")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device_name, "torch": torch.__version__,
                               "threads": torch.get_num_threads(), "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
