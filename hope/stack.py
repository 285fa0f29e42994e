"""``hope stack``: ad-hoc level stacking (Nested Learning §7.3): a Hope-Attention model from a pretrained Transformer++.

    hope stack --checkpoint runs/debug/checkpoints/last.ckpt --preset hope-attention-debug --out stacked/
    hope fit --config configs/pretrain/debug.yaml --model.preset hope-attention-debug \\
        --model.overrides "$(cat stacked/overrides.json)" --model.init_from stacked/model.ckpt

Mapping, block by block (the architecture - widths, depth, heads, vocabulary, RoPE - is the Transformer's; the CMS
periods, inner lr, objective, outer-loop level schedule and the extra levels' widths come from ``--preset``):

- embedding, final norm, head, ``attn_norm`` and ``attn`` (qkv, proj): copied;
- the Transformer's MLP sub-layer x + SwiGLU(RMSNorm(x)) is exactly one CMS level (its ``norm`` and ``mlp``):
  it becomes level ``--mlp_level`` (default 1, the fastest; its width is the Transformer's intermediate_size);
- every other level starts as a zero-output residual MLP: gate and up are initialised as usual, ``down`` is 0, so
  h + SwiGLU(norm(h)) = h and the stacked model computes the Transformer's function exactly. Those levels then
  learn (in pretraining and in context) from there; gradients reach their ``down`` first.

With the inner learning rate at 0 the stacked model reproduces the Transformer's logits (``tests/test_stack.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

from hope.checkpoint import atomic_torch_save, atomic_write_bytes, model_config_from, model_state_dict_from
from hope.config import ModelConfig
from hope.model import HopeLM

__all__ = ["stack", "stacked_overrides", "main"]

# fields copied from the Transformer: everything its weights' shapes and its function depend on
ARCH_FIELDS = (
    "vocab_size",
    "padding_multiple",
    "n_layer",
    "n_head",
    "n_embd",
    "head_dim",
    "max_seq_len",
    "rope_base",
    "norm_eps",
    "sliding_window",
    "attn_backend",
    "init_std",
    "tie_embeddings",
)


def stacked_overrides(source: ModelConfig, preset: str, mlp_level: int) -> dict:
    """Overrides of ``preset`` that give the Transformer's architecture with its MLP as CMS level ``mlp_level``."""
    target = ModelConfig.from_preset(preset)
    if target.family != "hope-attention":
        raise ValueError(f"--preset {preset!r} is family {target.family!r}; ad-hoc stacking needs 'hope-attention'.")
    if source.family != "transformer":
        raise ValueError(f"the checkpoint is family {source.family!r}; ad-hoc stacking starts from a 'transformer'.")
    levels = [
        {**dataclasses.asdict(level), "hidden": width}
        for level, width in zip(target.cms_levels, target.resolved_cms_hidden, strict=True)
    ]
    if not 0 <= mlp_level < len(levels):
        raise ValueError(f"--mlp_level {mlp_level + 1} is out of range: {preset!r} has {len(levels)} CMS levels.")
    levels[mlp_level]["hidden"] = source.resolved_intermediate_size
    return {**{f: getattr(source, f) for f in ARCH_FIELDS}, "cms_levels": levels}


def stack(transformer: HopeLM, preset: str, mlp_level: int = 0) -> HopeLM:
    """A Hope-Attention HopeLM initialised from ``transformer`` (see the module docstring); 0-based mlp_level."""
    overrides = stacked_overrides(transformer.config, preset, mlp_level)
    model = HopeLM(ModelConfig.from_preset(preset, **overrides)).to(next(transformer.parameters()).dtype)
    source = transformer.state_dict()
    renamed = {}
    for name, value in source.items():
        for old, new in ((".mlp_norm.", f".cms.levels.{mlp_level}.norm."), (".mlp.", f".cms.levels.{mlp_level}.mlp.")):
            name = name.replace(old, new)
        renamed[name] = value
    own = model.state_dict()
    unexpected = sorted(set(renamed) - set(own))
    if unexpected:
        raise ValueError(f"Transformer weights with no place in the stacked model: {unexpected[:5]}")
    with torch.no_grad():
        for name, value in renamed.items():
            own[name].copy_(value)
        for block in model.blocks:
            for i, level in enumerate(block.cms.levels):
                if i != mlp_level:
                    level.mlp.down.weight.zero_()  # zero-output residual: the function is unchanged
    return model


def main(argv: Sequence[str] | None = None) -> None:
    """``hope stack``: build a Hope-Attention model from a Transformer++ checkpoint, save it, say how to train it."""
    parser = argparse.ArgumentParser(
        prog="hope stack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="Transformer++ checkpoint (.ckpt or .safetensors)")
    parser.add_argument("--preset", default="hope-attention-debug", help="hope-attention preset for the CMS")
    parser.add_argument("--out", required=True, help="a .ckpt file, or a directory (model.ckpt inside)")
    parser.add_argument("--mlp_level", type=int, default=1, help="CMS level (1-based) that takes the MLP")
    args = parser.parse_args(argv)
    transformer = HopeLM(model_config_from(args.checkpoint))
    transformer.load_state_dict(model_state_dict_from(args.checkpoint))
    model = stack(transformer, args.preset, args.mlp_level - 1)
    out = Path(args.out)
    path = out if out.suffix == ".ckpt" else out / "model.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    atomic_torch_save({"state_dict": state, "model_config": model.config.to_dict()}, path)
    overrides = stacked_overrides(transformer.config, args.preset, args.mlp_level - 1)
    atomic_write_bytes(path.with_name("model_config.yaml"), yaml.safe_dump(model.config.to_dict()).encode())
    atomic_write_bytes(path.with_name("overrides.json"), json.dumps(overrides).encode())
    print(f"[hope] stacked {model.num_parameters() / 1e6:.2f}M-parameter {args.preset} -> {path}")
    print(
        f"[hope] train it with: --model.preset {args.preset} --model.overrides '{json.dumps(overrides)}' "
        f"--model.init_from {path}"
    )
