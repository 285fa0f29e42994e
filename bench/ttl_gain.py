"""How much HOPE checkpoints gain from learning in context on held-out text: perplexity of one stream per source
(the state carried from window to window) with the CMS frozen, with the model's own forward (which learns when it
was built with ``cms_learn_in_context``), and with ``hope.ttl.TestTimeLearner`` on either objective.

    python bench/ttl_gain.py --checkpoints runs/a/checkpoints/last.ckpt runs/b/checkpoints/last.ckpt \
        --sources default runs/corpora/info runs/corpora/changelogs --tokens 4096

Rows: checkpoint x source; columns: perplexity per mode and each mode's change against ``frozen``. ``default`` reads
the default corpus's held-out files; folders (``bench/local_corpora.py``) are read whole. Writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import time
from pathlib import Path

import torch
import yaml

from hope.checkpoint import load_model_weights, model_config_from
from hope.data.blocks import source_blocks
from hope.model import HopeLM
from hope.tokenizer import Tokenizer
from hope.ttl import TestTimeLearner

MODES = ("frozen", "forward", "ttl-teach", "ttl-reconstruction")


def build(checkpoint: str, mode: str, args) -> tuple[HopeLM, TestTimeLearner | None]:
    """The checkpoint's model for ``mode`` (the CMS's in-forward learning off for ``frozen``) and its learner."""
    config = dataclasses.replace(model_config_from(checkpoint), **args.overrides)
    if mode == "frozen":
        config = dataclasses.replace(config, cms_learn_in_context=False)
    model = HopeLM(config)
    load_model_weights(model, checkpoint)
    model.eval()
    if not mode.startswith("ttl-"):
        return model, None
    objective = mode.removeprefix("ttl-")
    lr = args.teach_lr if objective == "teach" else args.reconstruction_lr
    return model, TestTimeLearner(model, inner_lr=lr, objective=objective)


def stream_nll(model: HopeLM, learner: TestTimeLearner | None, idx: torch.Tensor, window: int) -> float:
    """Mean next-token NLL of ``idx`` [1, T] read ``window`` tokens per call, the state carried."""
    logits, state = [], None
    for start in range(0, idx.shape[1], window):
        piece = idx[:, start : start + window]
        if learner is None:
            with torch.no_grad():
                out, state = model(piece, state)
        else:
            out, state = learner.step(piece, state)
        logits.append(out[0])
    logits = torch.cat(logits)
    return torch.nn.functional.cross_entropy(logits[:-1].float(), idx[0, 1:]).item()


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", nargs="+", required=True)
    parser.add_argument("--sources", nargs="+", default=["default"])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--teach_lr", type=float, default=1e-3, help="TestTimeLearner inner lr, objective teach")
    parser.add_argument("--reconstruction_lr", type=float, default=3e-3, help="... objective reconstruction")
    parser.add_argument(
        "--overrides", nargs="*", default=[], help="model config KEY=VALUE (YAML), e.g. cms_max_step=0.01"
    )
    parser.add_argument("--out", help="write the results here (JSON)")
    args = parser.parse_args(argv)
    args.overrides = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in args.overrides)}

    tokenizer = Tokenizer.default()
    rows = []
    print(f"| checkpoint | source | {' | '.join(args.modes)} |")
    print("|---" * (len(args.modes) + 2) + "|")
    for source in args.sources:
        idx = source_blocks(source, tokenizer, args.tokens, 1, split="auto")[0]
        for checkpoint in args.checkpoints:
            ppl, seconds = {}, {}
            for mode in args.modes:
                start = time.perf_counter()
                ppl[mode] = math.exp(stream_nll(*build(checkpoint, mode, args), idx, args.window))
                seconds[mode] = time.perf_counter() - start
            rows.append({"checkpoint": checkpoint, "source": source, "perplexity": ppl, "seconds": seconds})
            base = ppl.get("frozen")
            cells = [f"{p:.2f}" + ("" if base is None else f" ({100 * (p / base - 1):+.1f}%)") for p in ppl.values()]
            print(f"| {checkpoint} | {source} | {' | '.join(cells)} |", flush=True)
    if args.out:
        meta = {"tokens": args.tokens, "window": args.window, "teach_lr": args.teach_lr, "overrides": args.overrides}
        meta |= {"reconstruction_lr": args.reconstruction_lr, "torch": torch.__version__, "machine": platform.machine()}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"rows": rows, **meta}, indent=1))
    return rows


if __name__ == "__main__":
    main()
