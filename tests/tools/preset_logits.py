"""Fingerprint every preset's float64 logits, to show that a refactoring changed no computation.

    python tests/tools/preset_logits.py --out before.json               # on the old code
    python tests/tools/preset_logits.py --check before.json             # on the new code: exit 1 on any change
    python tests/tools/preset_logits.py --check before.json --overrides hope_safe_step=false   # a new option off

Each preset is built in float64 and its parameters are set from a generator seeded by the parameter's *name*, so
the fingerprint does not depend on the order in which modules create their parameters (only on their names,
which checkpoints rely on anyway). Three computations are hashed (sha256 of the logits' bytes): one forward over
a fixed token sequence, the same sequence streamed in two calls that carry the state, and, for the HOPE
families, ``TestTimeLearner.step`` over it. ``--max_params`` skips presets above a size (float64 weights take
8 bytes per parameter).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
import yaml

from hope.config import PRESETS, ModelConfig
from hope.model import HopeLM
from hope.ttl import TestTimeLearner


def set_parameters_by_name(model: torch.nn.Module) -> None:
    """Every parameter from a generator seeded by its name: vectors near 1, tensors N(0, 1 / last dim)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
            g = torch.Generator().manual_seed(seed)
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64)
            p.copy_(1 + 0.1 * noise if p.ndim == 1 else noise * p.shape[-1] ** -0.5)


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()


def fingerprint(name: str, seq_len: int, overrides: dict | None = None) -> dict:
    config = ModelConfig.from_preset(name, **(overrides or {}))
    model = HopeLM(config).double().eval()
    set_parameters_by_name(model)
    idx = torch.randint(0, config.vocab_size, (2, seq_len), generator=torch.Generator().manual_seed(0))
    split = seq_len // 2 + 3
    with torch.no_grad():
        whole, _ = model(idx)
        first, state = model(idx[:, :split])
        second, _ = model(idx[:, split:], state)
    out = {
        "params": model.num_parameters(),
        "forward": digest(whole),
        "streamed": digest(torch.cat([first, second], 1)),
    }
    out["sample"] = [float(v) for v in whole[0, -1, :4]]
    if config.family in ("hope", "hope-attention"):
        logits, _ = TestTimeLearner(model).step(idx)
        out["ttl"] = digest(logits)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the fingerprints here")
    parser.add_argument("--check", help="compare with fingerprints written earlier; exit 1 on a difference")
    parser.add_argument("--presets", nargs="*", default=None, help="default: every preset")
    parser.add_argument("--seq_len", type=int, default=72)
    parser.add_argument("--max_params", type=float, default=float("inf"), help="skip larger presets")
    parser.add_argument("--overrides", nargs="*", default=[], help="KEY=VALUE (YAML) config fields for every preset")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    overrides = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in args.overrides)}
    reference = json.loads(Path(args.check).read_text()) if args.check else {}
    names = args.presets or (sorted(reference) if reference else sorted(PRESETS))
    results, changed = {}, []
    for name in names:
        config = ModelConfig.from_preset(name)
        if _count(config) > args.max_params:
            print(f"{name}: skipped (> max_params)")
            continue
        start = time.perf_counter()
        results[name] = fingerprint(name, args.seq_len, overrides)
        verdict = ""
        if name in reference:
            same = {
                k: results[name][k] == reference[name].get(k)
                for k in ("forward", "streamed", "ttl")
                if k in results[name] or k in reference[name]
            }
            verdict = "identical" if all(same.values()) else f"CHANGED {[k for k, v in same.items() if not v]}"
            if not all(same.values()):
                changed.append(name)
        print(
            f"{name}: {results[name]['params'] / 1e6:.1f}M params, {time.perf_counter() - start:.1f} s {verdict}",
            flush=True,
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    if args.check:
        print(f"{len(results) - len(changed)} of {len(results)} presets bit-identical; changed: {changed}")
    return 1 if changed else 0


def _count(config: ModelConfig) -> int:
    with torch.device("meta"):
        return HopeLM(config).num_parameters()


if __name__ == "__main__":
    sys.exit(main())
