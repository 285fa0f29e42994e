"""Sliding-window attention: the O(T W) blocked kernel against the masked full SDPA it replaced, forward + backward.

    python bench/attention.py                                  # T=2048, W=512, 12 heads of 64, batch 1 (CPU)
    python bench/attention.py --seq_len 4096 --device cuda --dtype bf16

Rows: without a prefix (Transformer++ with ``sliding_window``) and with the 4 persistent tokens of MAG/MAL (head dim
widened to 2D, as ``hope.layers.attention`` does). Each time is the median of ``--repeats`` runs of forward and
backward (on CPU process time, which a busy shared machine disturbs less than wall time); the last column is the
masked SDPA's time over the blocked kernel's. Writes JSON
(bench/results/attention_<device>.json unless --out is given).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hope.ops.attention import causal_mask, sliding_window_attention


def masked(q, k, v, window, prefix_k, prefix_v):
    """The former path: one SDPA over every key with the [T, N + T] mask."""
    T = q.shape[2]
    positions = torch.arange(T, device=q.device)
    allowed = causal_mask(positions, positions, window)
    if prefix_k is not None:
        k, v = torch.cat([prefix_k, k], 2), torch.cat([prefix_v, v], 2)
        allowed = torch.cat([allowed.new_ones(T, prefix_k.shape[2]), allowed], -1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


def time_it(fn, inputs, window, prefix, repeats: int, device: torch.device) -> float:
    """Median seconds of forward + backward (CPU: process time)."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    times = []
    for _ in range(repeats + 1):  # the first run warms up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = clock()
        fn(*inputs, window, *prefix).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(clock() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq_len", type=int, default=2048)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head_dim", type=int, default=64)
    parser.add_argument("--n_prefix", type=int, default=4)
    parser.add_argument("--block", type=int, default=None, help="queries per block of the O(T W) kernel (default W)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    rows = []
    for n_prefix in (0, args.n_prefix):
        D = args.head_dim * (2 if n_prefix else 1)  # the prefix widens the head dim (hope.layers.attention)
        shape = (args.batch_size, args.heads, args.seq_len, D)
        inputs = [torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3)]
        prefix = [torch.randn(*shape[:2], n_prefix, D, device=device, dtype=dtype) for _ in range(2)]
        prefix = prefix if n_prefix else [None, None]
        blocked = lambda q, k, v, w, pk, pv: sliding_window_attention(q, k, v, w, pk, pv, block=args.block)  # noqa: E731
        seconds = {
            name: time_it(fn, inputs, args.window, prefix, args.repeats, device)
            for name, fn in (("masked", masked), ("blocked", blocked))
        }
        rows.append({"n_prefix": n_prefix, "head_dim": D, **{f"{k}_s": v for k, v in seconds.items()}})
    block = args.block or min(args.window, 128)  # the kernel's default
    print(f"T={args.seq_len} W={args.window} block={block} B={args.batch_size} H={args.heads} {args.dtype} on {device}")
    print("| prefix | head dim | masked SDPA s | blocked s | speed-up |")
    print("|---|---|---|---|---|")
    for r in rows:
        speedup = r["masked_s"] / r["blocked_s"]
        print(f"| {r['n_prefix']} | {r['head_dim']} | {r['masked_s']:.3f} | {r['blocked_s']:.3f} | {speedup:.2f}x |")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    out = Path(args.out or f"bench/results/attention_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": device_name, "torch": torch.__version__, "threads": torch.get_num_threads()}
    out.write_text(json.dumps({**meta, **vars(args), "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
