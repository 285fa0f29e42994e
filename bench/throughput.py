"""Training throughput of model presets: tokens/s, peak memory and (on GPUs) MFU, on synthetic tokens.

    python bench/throughput.py --presets debug --seq_len 256 --batch_size 8              # CPU
    python bench/throughput.py --presets transformer-170m --seq_len 2048 --batch_size 8 --device cuda --precision bf16
    python bench/throughput.py --presets debug hope-debug hope-debug:memory_compile=true --rounds 3

A preset may carry config overrides after a colon, comma-separated KEY=VALUE (YAML values): the row is labelled
with the whole spec.

One training step = forward, next-token loss, backward, AdamW step: what `hope fit` does per micro-batch, without
data loading. MFU counts 6 * (non-embedding parameters) + 12 * n_layer * seq_len * d_attn FLOPs per token (the
PaLM appendix B formula) against the device's dense bf16 peak (--peak_tflops). Prints a markdown table whose last
column is each preset's tokens/s relative to the first preset's, writes JSON (bench/results/throughput_cpu.json on
CPU unless --out is given).

On a shared or noisy machine, --rounds R times every preset R times, interleaved (A, B, C, A, B, C, ...), and
reports the median step time, so that the ratios compare presets measured under the same conditions.

Peak memory: on GPUs, torch's peak allocation; on CPU, measured in a fresh process per preset (so that presets timed
in one process do not share one high-water mark): its peak resident set minus its resident set before the model is
built, over the warmup and one step, with glibc told to unmap large freed blocks (``MALLOC_MMAP_THRESHOLD_``) so
that RSS follows live tensors: model, optimizer state and activations.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from hope.config import ModelConfig
from hope.loss import next_token_loss
from hope.model import HopeLM


def flops_per_token(model: HopeLM, seq_len: int) -> float:
    cfg = model.config
    matmul_params = model.num_parameters(exclude_embeddings=True)
    attention = 12 * cfg.n_layer * seq_len * cfg.n_head * cfg.resolved_head_dim
    return 6 * matmul_params + attention


def parse_spec(spec: str) -> tuple[str, dict]:
    """ "hope-debug:memory_compile=true,hope_chunk_size=32" -> ("hope-debug", {"memory_compile": True, ...})."""
    preset, _, rest = spec.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"--presets {spec!r}: override {item!r} is not KEY=VALUE")
        overrides[key.strip()] = yaml.safe_load(value)
    return preset, overrides


def cuda_peak_memory_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30


def _status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB: VmRSS (now) or VmHWM (this process image's peak, reset by exec; unlike
    ru_maxrss, which a child inherits from the parent that forked it)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_of(spec: str, args) -> float:
    """In the child process: GiB of peak RSS above the RSS before building ``spec``, over warmup + one step."""
    base = _status_kib("VmRSS")
    _, time_steps = prepare(spec, argparse.Namespace(**{**vars(args), "steps": 1}), torch.device("cpu"))
    time_steps()
    return (_status_kib("VmHWM") - base) / 2**20


def cpu_peak_memory_gib(spec: str, args) -> float:
    """``peak_of`` in a fresh process, with the same shapes, precision and threads."""
    cmd = [sys.executable, __file__, "--peak_of", spec, "--seq_len", str(args.seq_len)]
    cmd += ["--batch_size", str(args.batch_size), "--warmup", str(args.warmup), "--precision", args.precision]
    env = os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(args.threads)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise RuntimeError(f"peak memory of {spec!r} failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def peak_memory_gib(spec: str, args, device: torch.device) -> float | None:
    """The row's peak memory: torch's on GPUs, the fresh process's on CPU (None with --no_cpu_peak)."""
    if device.type == "cuda":
        return cuda_peak_memory_gib(device)
    return None if args.no_cpu_peak else cpu_peak_memory_gib(spec, args)


def prepare(spec: str, args, device: torch.device):
    """The model of a preset spec and a function that times ``args.steps`` training steps (after the warmup on its
    first call) and returns the mean seconds per step."""
    torch.manual_seed(0)
    preset, overrides = parse_spec(spec)
    config = ModelConfig.from_preset(preset, **{"max_seq_len": max(args.seq_len, 16), **overrides})
    model = HopeLM(config).to(device)
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

    warm = [False]

    def time_steps() -> float:
        if not warm[0]:
            for _ in range(args.warmup):
                step()
            warm[0] = True
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / args.steps

    return model, time_steps


def result(preset: str, model: HopeLM, seconds: float, args, device: torch.device) -> dict:
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
        "peak_mem_GiB": peak_memory_gib(preset, args, device),
    }


def measure(preset: str, args, device: torch.device) -> dict:
    """One preset, timed ``args.rounds`` times in a row (median)."""
    model, time_steps = prepare(preset, args, device)
    return result(preset, model, statistics.median(time_steps() for _ in range(args.rounds)), args, device)


def measure_interleaved(presets: list[str], args, device: torch.device) -> list[dict]:
    """Every preset timed ``args.rounds`` times, round-robin; the median per preset (CPU: all models in memory)."""
    prepared = [prepare(preset, args, device) for preset in presets]
    seconds = [[] for _ in presets]
    for _ in range(args.rounds):
        for times, (_, time_steps) in zip(seconds, prepared, strict=True):
            times.append(time_steps())
    return [
        result(preset, model, statistics.median(times), args, device)
        for preset, (model, _), times in zip(presets, prepared, seconds, strict=True)
    ]


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
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="time each preset this many times (median); on CPU the presets are interleaved round-robin",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="JSON path (default: bench/results/throughput_cpu.json on CPU, bench/results/throughput.json otherwise)",
    )
    parser.add_argument(
        "--keep_going",
        action="store_true",
        help="record a failing preset as an error row and go on (default: only on OOM)",
    )
    parser.add_argument("--no_cpu_peak", action="store_true", help="CPU: skip the peak-memory child process")
    parser.add_argument("--peak_of", default=None, help=argparse.SUPPRESS)  # internal: the CPU peak-memory child
    args = parser.parse_args()
    args.threads = torch.get_num_threads()
    if args.peak_of:
        print(peak_of(args.peak_of, args))
        return
    device = torch.device(args.device)
    if args.out is None:
        args.out = "bench/results/throughput_cpu.json" if device.type == "cpu" else "bench/results/throughput.json"

    if device.type == "cpu" and args.rounds > 1:
        rows = measure_interleaved(args.presets, args, device)
    else:
        rows = []
        for preset in args.presets:
            try:
                rows.append(measure(preset, args, device))
            except Exception as error:  # a row that says so beats losing the rest of the table
                if not (args.keep_going or isinstance(error, torch.OutOfMemoryError)):
                    raise
                message = "out of memory" if isinstance(error, torch.OutOfMemoryError) else repr(error)[:300]
                rows.append({"preset": preset, "error": message, **{k: vars(args)[k] for k in ROW_SHAPE}})
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            write_json(rows, args, device)  # after every row: a run cut short keeps what it measured
    write_json(rows, args, device)
    print_table(rows)
    print(f"wrote {args.out}")


ROW_SHAPE = ("seq_len", "batch_size", "precision")


def write_json(rows: list[dict], args, device: torch.device) -> None:
    """The rows, with each one's tokens/s relative to the first row's, and the device, to ``args.out``."""
    base = rows[0].get("tokens_per_s")
    for r in rows:  # throughput relative to the first preset (e.g. the Transformer++ baseline)
        if "tokens_per_s" in r and base:
            r["ratio_to_first"] = r["tokens_per_s"] / base
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    meta = {"device": device_name, "torch": torch.__version__, "threads": torch.get_num_threads()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**meta, "rounds": args.rounds, "results": rows}, indent=2))


def print_table(rows: list[dict]) -> None:
    """The rows as a Markdown table."""
    print(f"| preset | params | seq | batch | prec | step s | tokens/s | MFU | peak GiB | x {rows[0]['preset']} |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['preset']} | - | {r['seq_len']} | {r['batch_size']} | {r['precision']} | {r['error']} ||||||")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        ratio = f"{r['ratio_to_first']:.2f}" if "ratio_to_first" in r else "-"
        peak = "-" if r["peak_mem_GiB"] is None else f"{r['peak_mem_GiB']:.2f}"
        print(
            f"| {r['preset']} | {r['params_M']:.1f}M | {r['seq_len']} | {r['batch_size']} | {r['precision']} | "
            f"{r['step_s']:.3f} | {r['tokens_per_s']:,.0f} | {mfu} | {peak} | {ratio} |"
        )


if __name__ == "__main__":
    main()
