"""Split invariance of a model's stream in float32 and bf16: the logits of one real-text stream read in windows of
two sizes (the recurrent state carried from window to window), against each other and against float64.

    python bench/split_agreement.py --checkpoint runs/hope-debug/checkpoints/last.ckpt --source runs/corpora/locales
    python bench/split_agreement.py --checkpoint CKPT --source DIR --overrides hope_safe_step=false  # no guard

In exact arithmetic every split gives the same logits (``HopeLM`` streams exactly), so any difference is rounding,
amplified by the model's recurrence. Per precision (float64; float32; bf16 autocast, as ``bf16-mixed`` training) and
window, the table shows the largest |logit - float64 logit| over the first 1K, 2K, 4K, ... tokens and the
perplexity; the last column is the largest |logit difference| between the two windows in that precision. Documents
of ``--source`` (``bench/local_corpora.py`` writes real-text folders; ``default`` reads the default corpus's
held-out files) are joined as ``[bos] doc [eos] ...`` and cut at ``--tokens``. Writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import platform
from pathlib import Path

import torch
import yaml

from hope.checkpoint import load_model_weights, model_config_from
from hope.data.blocks import source_blocks
from hope.model import HopeLM
from hope.tokenizer import Tokenizer

PRECISIONS = {"float64": (torch.float64, False), "float32": (torch.float32, False), "bf16": (torch.float32, True)}


def streamed_logits(model: HopeLM, idx: torch.Tensor, window: int, autocast: bool) -> torch.Tensor:
    """Logits [T, V] (float64) of ``idx`` [1, T] read ``window`` tokens per call, the state carried."""
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    logits, state = [], None
    with torch.no_grad(), bf16:
        for start in range(0, idx.shape[1], window):
            out, state = model(idx[:, start : start + window], state)
            logits.append(out[0].double())
    return torch.cat(logits)


def perplexity(logits: torch.Tensor, idx: torch.Tensor) -> float:
    """Perplexity of the stream's next-token predictions."""
    nll = -torch.log_softmax(logits[:-1], -1).gather(-1, idx[0, 1:, None]).mean()
    return math.exp(nll.item())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a hope fit .ckpt or a .safetensors")
    parser.add_argument("--source", required=True, help="text folder or file (any data.source spec)")
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--windows", type=int, nargs=2, default=[16, 256])
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    parser.add_argument("--overrides", nargs="*", default=[], help="model config KEY=VALUE (YAML values)")
    parser.add_argument("--out", help="write the results here (JSON)")
    args = parser.parse_args(argv)

    overrides = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in args.overrides)}
    config = dataclasses.replace(model_config_from(args.checkpoint), **overrides)
    idx = source_blocks(args.source, Tokenizer.default(), args.tokens, 1, split="auto")[0]  # [1, tokens]
    marks = [m for m in (1024, 2048, 4096, 8192, 16384) if m < args.tokens] + [args.tokens]
    logits = {}
    for name in args.precisions:
        dtype, autocast = PRECISIONS[name]
        model = HopeLM(config)
        load_model_weights(model, args.checkpoint)
        model = model.to(dtype).eval()
        for window in args.windows:
            logits[name, window] = streamed_logits(model, idx, window, autocast)

    reference = logits.get(("float64", args.windows[0]))
    header = " | ".join(f"err@{m}" for m in marks)
    print(f"| precision | window | {header} | perplexity | max |window a - window b| |")
    print("|---" * (len(marks) + 4) + "|")
    rows = []
    for (name, window), out in logits.items():
        err = None if reference is None else (out - reference).abs().amax(-1)
        errs = [None if err is None else err[:m].max().item() for m in marks]
        other = logits[name, args.windows[1 - args.windows.index(window)]]
        split = (out - other).abs().max().item()
        row = {"precision": name, "window": window, "max_abs_err_vs_float64": dict(zip(marks, errs, strict=True))}
        row |= {"perplexity": perplexity(out, idx), "max_abs_split_difference": split}
        rows.append(row)
        cells = " | ".join("-" if e is None else f"{e:.1e}" for e in errs)
        print(f"| {name} | {window} | {cells} | {row['perplexity']:.3f} | {split:.1e} |")
    result = {
        "checkpoint": args.checkpoint,
        "source": args.source,
        "tokens": args.tokens,
        "overrides": overrides,
        "rows": rows,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
