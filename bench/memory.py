"""Benchmark the Titans memory op: naive per-token recurrence vs naive chunk loop vs chunk-parallel (plain, and with
``recompute``: chunk-boundary states only for backward) vs the fused Triton kernels (``--impls triton``, CUDA).

Measures forward + backward (outer-loop gradients w.r.t. all inputs) throughput in tokens/s and the peak memory
of one call. Each (implementation, length) pair runs in its own subprocess so that peaks do not mix:
on CUDA the peak is ``torch.cuda.max_memory_allocated`` minus the allocation before the call; on CPU it is the
process's peak RSS (``resource.getrusage``) minus its RSS before the call, taken in a second, untimed run with
glibc told to unmap every large freed block (``MALLOC_MMAP_THRESHOLD_``) so that RSS follows live tensors.

    python bench/memory.py                            # CPU, T = 512..4096, writes bench/results/memory.json
    python bench/memory.py --device cuda --naive-max-len 4096
    python bench/memory.py --device cuda --impls chunked "chunked recompute" triton --lengths 2048 4096

The naive implementations take a per-token autograd.grad with create_graph and keep every per-token weight
alive for the backward, so they are skipped above ``--naive-max-len`` (default 2048) to keep the run short.
"""

import argparse
import functools
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from hope.ops.common import MemoryRule
from hope.ops.titans import chunked, naive

IMPLS = {
    "naive per-token": naive.titans_memory_recurrent,
    "naive chunk loop": naive.titans_memory,
    "chunked": chunked.titans_memory,
    "chunked recompute": functools.partial(chunked.titans_memory, recompute=True),
    "triton": None,  # hope.ops.titans.triton, imported when asked for (needs triton and, outside its interpreter, CUDA)
}


def implementation(impl: str):
    """The op of an ``IMPLS`` name."""
    if impl == "triton":
        return importlib.import_module("hope.ops.titans.triton").titans_memory_triton
    return IMPLS[impl]


def make_inputs(T: int, args, device, dtype) -> dict:
    """Op inputs at realistic scales: unit q/k, gates in (0, 1), a meta-learned init broadcast over the batch."""
    B, H, D = args.batch, args.heads, args.head_dim

    def leaf(t):
        return t.to(device, dtype).requires_grad_()

    dims = [D] + [args.expansion * D] * (args.depth - 1) + [D]
    init = [leaf(torch.randn(H, i, o) / i**0.5) for i, o in zip(dims[:-1], dims[1:], strict=True)]
    return {
        "q": leaf(F.normalize(torch.randn(B, H, T, D), dim=-1)),
        "k": leaf(F.normalize(torch.randn(B, H, T, D), dim=-1)),
        "v": leaf(torch.randn(B, H, T, D)),
        "theta": leaf(0.3 * torch.rand(B, H, T)),
        "eta": leaf(torch.rand(B, H, T)),
        "alpha": leaf(0.1 * torch.rand(B, H, T)),
        "weights": tuple(W.expand(B, -1, -1, -1) for W in init),
        "momentum": tuple(torch.zeros(B, *W.shape, device=device, dtype=dtype) for W in init),
    }


def fwd_bwd(impl: str, x: dict, args) -> None:
    gates, state = (x["theta"], x["eta"], x["alpha"]), (x["weights"], x["momentum"])
    rule = MemoryRule(args.chunk_size, max_grad_norm=args.max_grad_norm)
    y, (W, S) = implementation(impl)(x["q"], x["k"], x["v"], gates, state, rule)
    loss = y.square().mean() + sum(w.square().mean() for w in W)
    loss.backward()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(impl: str, T: int, args) -> dict:
    """One (impl, T) measurement in this process."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    fwd_bwd(impl, make_inputs(min(T, 2 * args.chunk_size), args, device, dtype), args)  # warm up kernels/allocators
    x = make_inputs(T, args, device, dtype)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    times = []
    for _ in range(args.repeats if not impl.startswith("naive") else 1):
        _sync(device)
        t0 = time.perf_counter()
        fwd_bwd(impl, x, args)
        _sync(device)
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base  # ru_maxrss is KiB on Linux
    sec = statistics.median(times)
    return {"impl": impl, "T": T, "seconds": sec, "tokens_per_s": args.batch * T / sec, "peak_mem_mb": peak / 2**20}


def _subprocess(impl: str, T: int, argv: list[str], env: dict | None = None) -> dict:
    cmd = [sys.executable, __file__, *argv, "--worker", impl, str(T)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        return {"impl": impl, "T": T, "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(impl: str, T: int, argv: list[str], cpu: bool) -> dict:
    result = _subprocess(impl, T, argv)
    if cpu and "error" not in result:
        # RSS only follows live tensors when glibc unmaps every large freed block, which slows the run down, so
        # the peak on CPU comes from a second, untimed run under a fixed mmap threshold
        env = os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536"}
        result["peak_mem_mb"] = _subprocess(impl, T, [*argv, "--repeats", "1"], env)["peak_mem_mb"]
    return result


def markdown(results: list[dict], lengths: list[int]) -> str:
    by = {(r["impl"], r["T"]): r for r in results}
    lines = ["| impl | " + " | ".join(f"T={T} tok/s | peak MiB" for T in lengths) + " |"]
    lines.append("|---|" + "---|---|" * len(lengths))
    for impl in dict.fromkeys(r["impl"] for r in results):
        cells = []
        for T in lengths:
            r = by.get((impl, T))
            if r is None or "error" in r:
                cells += ["skipped" if r is None else "error", "—"]
            else:
                cells += [f"{r['tokens_per_s']:,.0f}", f"{r['peak_mem_mb']:,.1f}"]
        lines.append(f"| {impl} | " + " | ".join(cells) + " |")
    speedups = [
        f"T={T}: {by[('chunked', T)]['tokens_per_s'] / by[(ref, T)]['tokens_per_s']:.0f}x vs {ref}"
        for T in lengths
        for ref in ("naive per-token", "naive chunk loop")
        if "tokens_per_s" in by.get((ref, T), {}) and "tokens_per_s" in by.get(("chunked", T), {})
    ]
    return "\n".join(lines) + ("\n\nchunked speed-up: " + "; ".join(speedups) if speedups else "")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    p.add_argument("--impls", nargs="+", choices=list(IMPLS), default=list(IMPLS)[:4], help="implementations to run")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--expansion", type=int, default=4)
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--max-grad-norm", type=float, default=10.0, help="inner gradient clipping (the layer's default)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of the chunked op (median); naive runs once")
    p.add_argument("--naive-max-len", type=int, default=2048, help="skip the naive implementations above this T")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--out", default="bench/results/memory.json")
    p.add_argument("--worker", nargs=2, metavar=("IMPL", "T"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args)))
        return

    argv = sys.argv[1:]
    results = []
    for T in args.lengths:
        for impl in args.impls:
            if impl.startswith("naive") and T > args.naive_max_len:
                continue
            results.append(measure(impl, T, argv, cpu=args.device == "cpu"))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    table = markdown(results, args.lengths)
    print(table)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    with open(args.out, "w") as f:
        json.dump(
            {"config": vars(args) | {"device_name": device_name, "torch": torch.__version__}, "results": results},
            f,
            indent=1,
        )
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
