"""Finetune checkpoints: starting weights, trainable-only (adapter) checkpoints, and loading a finetuned model.

A ``hope finetune`` checkpoint is a Lightning checkpoint with one more entry, ``finetune``::

    {"save_weights": "full" | "trainable", "init_from": path or None, "base_fingerprint": sha256 or None,
     "memory_layers": MemoryLayerConfig as a dict or None, "structure": method.structure() (LoRA: its modules),
     "method": {"class_path", "config"}, "method_state": method.state_dict()}

With ``save_weights: trainable`` the state dict leaves out every frozen parameter (for LoRA: the whole base model);
they come back from ``init_from``, whose frozen weights must hash to ``base_fingerprint``.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch
from torch import nn

from hope.layers.memory_layer import MemoryLayerConfig, swap_mlp_for_memory
from hope.lit.checkpoint import (
    load_checkpoint_file,
    load_model,
    model_config_from,
    model_state_dict_from,
    tied_aliases,
)


def weights_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, shapes, dtypes and bytes (order-independent)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def is_finetune_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` was written by ``hope finetune`` (a ``.ckpt`` with a ``finetune`` entry). A missing or
    corrupt file raises ``load_checkpoint_file``'s error."""
    path = Path(path)
    return path.suffix != ".safetensors" and "finetune" in load_checkpoint_file(path)


def load_any(path: str | os.PathLike) -> nn.Module:
    """The ``HopeLM`` of any checkpoint, in eval mode on CPU: ``hope finetune`` checkpoints through
    ``load_finetuned`` (memory layers rebuilt, LoRA merged, frozen weights from the base), ``hope fit`` checkpoints
    and ``.safetensors`` through ``hope.lit.checkpoint.load_model``."""
    return load_finetuned(path) if is_finetune_checkpoint(path) else load_model(path)


def starting_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Plain model weights of ``path``: a ``hope fit`` checkpoint or ``.safetensors`` as they are, a ``hope
    finetune`` checkpoint through ``load_finetuned`` (adapters merged), so finetunes can chain."""
    if is_finetune_checkpoint(path):
        return load_finetuned(path).state_dict()
    return model_state_dict_from(path)


def init_weights(model: nn.Module, path: str | os.PathLike, memory: MemoryLayerConfig | None) -> None:
    """Load the starting weights of a finetune run; swap in the memory layers before (the checkpoint has them) or
    after (it has not: they start fresh and need training) loading."""
    state = starting_state(path)
    blocks = memory.blocks if memory is not None else []
    has_memory = {b for b in range(len(model.blocks)) if f"blocks.{b}.mlp.values.weight" in state}
    if has_memory - {b % len(model.blocks) for b in blocks}:
        raise ValueError(
            f"{str(path)!r} has memory layers in blocks {sorted(has_memory)}; set "
            f"model.memory_layers.blocks to {sorted(has_memory)} (and the same sizes)."
        )
    if memory is not None and has_memory:
        swap_mlp_for_memory(model, memory)
    _load_state(model, state, str(path))
    if memory is not None and not has_memory:
        swap_mlp_for_memory(model, memory)


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """``load_model_weights``'s checks (tied aliases, clear errors) for a state dict in memory."""
    own = model.state_dict()
    for alias, name in tied_aliases(own).items():
        if alias not in state and name in state:
            state[alias] = state[name]
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    mismatched = [k for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"weights in {where!r} do not fit this model: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, shape mismatches {mismatched[:5]}. Use the preset/overrides (and "
            "model.memory_layers) the checkpoint was trained with."
        )
    model.load_state_dict(state)


def load_finetuned(path: str | os.PathLike, base: str | os.PathLike | None = None, merge: bool = True) -> nn.Module:
    """The ``HopeLM`` of a ``hope finetune`` checkpoint, in eval mode on CPU.

    Memory layers are rebuilt; LoRA adapters are merged and removed (``merge=False`` keeps them, unmerged). A
    trainable-only checkpoint takes its frozen weights from ``base`` (default: the run's ``init_from``).
    """
    from hope.finetune.methods.lora import apply_lora, remove_lora
    from hope.model import HopeLM

    ckpt = load_checkpoint_file(path)
    info = ckpt.get("finetune")
    if info is None:
        raise ValueError(f"{str(path)!r} is not a `hope finetune` checkpoint; use hope.lit.checkpoint.load_model.")
    model = HopeLM(model_config_from(path))
    memory = MemoryLayerConfig(**info["memory_layers"]) if info.get("memory_layers") else None
    if info["save_weights"] == "trainable":
        base = base or info["init_from"]
        if base is None:
            raise ValueError(f"{str(path)!r} stores trainable weights only and names no base; pass `base`.")
        if not Path(base).is_file():
            raise FileNotFoundError(
                f"{str(path)!r} stores trainable weights only (model.save_weights: trainable); its frozen weights "
                f"come from the base {str(base)!r} (the run's init_from), which does not exist here (relative paths "
                "are from the directory `hope finetune` ran in). Fix: run from that directory, pass `base` to "
                "load_finetuned, or finetune with model.save_weights: full."
            )
        init_weights(model, base, memory)
    elif memory is not None:
        swap_mlp_for_memory(model, memory)
    lora = info.get("structure", {}).get("lora")
    if lora:
        apply_lora(model, [f"re:{re.escape(m)}" for m in lora["modules"]], lora["rank"], lora["alpha"])
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    if info["save_weights"] == "trainable":
        check_base(model, state, info.get("base_fingerprint"), base)
        state = {**model.state_dict(), **state}
    model.load_state_dict(state)
    if lora and merge:
        remove_lora(model)
    return model.eval()


def check_base(model: nn.Module, saved: dict[str, torch.Tensor], fingerprint: str | None, base) -> None:
    """The frozen weights the model has now (from ``base``) must be those the trainable-only checkpoint was
    trained on: otherwise the adapters would be applied to other weights without any error."""
    frozen = {n: p for n, p in model.named_parameters() if n not in saved}
    if fingerprint is not None and weights_fingerprint(frozen) != fingerprint:
        raise ValueError(
            f"the frozen weights from {str(base)!r} differ from those this trainable-only checkpoint was "
            "trained on; pass the same init_from / base checkpoint."
        )
