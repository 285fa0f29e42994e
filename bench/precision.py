"""How far the Titans memory op drifts from float64 in lower precision: which inner-loop dtype is safe.

    python bench/precision.py                        # CPU; T=512, 4 heads of 64, hidden 256, chunks of 64, clip 10
    python bench/precision.py --device cuda --kernel triton

Rows: float32 throughout; bf16 autocast with a float32 memory state (what ``bf16-mixed`` training does: matmuls in
bf16, weights, momentum and the update accumulated in float32); bf16 tokens and a bf16 state. Each row gives the
relative error (norm of the difference over the norm) against float64 of the read-out y, the final weights, and the
worst gradient of a fixed functional w.r.t. q, k, v and the initial weights.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from hope.ops.common import MemoryRule
from hope.ops.titans import memory_op

ROWS = {  # name: (token dtype, state dtype, autocast)
    "float32": (torch.float32, torch.float32, False),
    "bf16 autocast, float32 state": (torch.float32, torch.float32, True),
    "bf16 tokens and state": (torch.bfloat16, torch.bfloat16, False),
}


def inputs(args) -> dict:
    """float64 op inputs at a preset's scales: unit q, k; theta <= 1 / (2C); alpha at its init (3e-4)."""
    g = torch.Generator().manual_seed(0)
    B, H, T, D, E, C = 1, args.heads, args.seq_len, args.head_dim, args.hidden, args.chunk_size
    randn = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g)  # noqa: E731
    rand = lambda *s: torch.rand(*s, dtype=torch.float64, generator=g)  # noqa: E731
    return {
        "tokens": (F.normalize(randn(B, H, T, D), dim=-1), F.normalize(randn(B, H, T, D), dim=-1), randn(B, H, T, D)),
        "gates": (rand(B, H, T) / (2 * C), rand(B, H, T), torch.full((B, H, T), 3e-4, dtype=torch.float64)),
        "weights": (randn(B, H, D, E) / D**0.5, randn(B, H, E, D) / E**0.5),
    }


def run(x: dict, op, rule: MemoryRule, dtypes, device: torch.device):
    """Outputs (y, final weights) and gradients, in float64 for comparison."""
    token_dtype, state_dtype, autocast = dtypes
    tokens = [t.to(device, token_dtype).requires_grad_() for t in x["tokens"]]
    weights = [W.to(device, state_dtype).requires_grad_() for W in x["weights"]]
    state = (tuple(weights), tuple(torch.zeros_like(W) for W in weights))
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        y, (W_final, _) = op(*tokens, tuple(g.to(device, state_dtype) for g in x["gates"]), state, rule)
    probe = torch.linspace(-1, 1, y.numel(), dtype=torch.float64, device=device).view_as(y)
    loss = (y.double() * probe).sum() + sum(W.double().square().sum() for W in W_final)
    grads = torch.autograd.grad(loss, tokens + weights)
    return [t.double() for t in (y, *W_final)], [g.double() for g in grads]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq_len", type=int, default=512)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head_dim", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--chunk_size", type=int, default=64)
    parser.add_argument("--max_grad_norm", type=float, default=10.0)
    parser.add_argument("--kernel", default="torch", help="ModelConfig.memory_kernel")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device, op, x = torch.device(args.device), memory_op(args.kernel), inputs(args)
    rule = MemoryRule(args.chunk_size, True, "silu", args.max_grad_norm)
    reference = run(x, memory_op("torch"), rule, (torch.float64, torch.float64, False), device)
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    rows = []
    for name, dtypes in ROWS.items():
        out, grads = run(x, op, rule, dtypes, device)
        errors = [rel(a, b) for a, b in zip(out, reference[0], strict=True)]
        worst_grad = max(rel(a, b) for a, b in zip(grads, reference[1], strict=True))
        rows.append({"row": name, "y": errors[0], "W1": errors[1], "W2": errors[2], "grad": worst_grad})
    print(f"T={args.seq_len}, {args.heads} heads of {args.head_dim}, hidden {args.hidden}, kernel {args.kernel}")
    print("| precision | y | W1 | W2 | worst gradient |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['row']} | {r['y']:.1e} | {r['W1']:.1e} | {r['W2']:.1e} | {r['grad']:.1e} |")
    out = Path(args.out or f"bench/results/precision_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"torch": torch.__version__, **vars(args), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
