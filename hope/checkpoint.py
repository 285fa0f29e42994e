"""Checkpoint files: atomic writes, and every way of loading a model from them (no Lightning needed).

Writes go to ``<path>.tmp``, are fsync'ed and then ``os.replace``d, so a run killed mid-save keeps its previous
good file. Loading reads any checkpoint the project writes:

- ``hope fit`` checkpoints: Lightning ``.ckpt`` files whose ``state_dict`` holds the model under ``model.`` and
  whose ``model_config`` entry is the resolved ``ModelConfig``;
- ``.safetensors`` files written by ``hope convert``, with ``model_config.yaml`` beside them;
- ``hope finetune`` checkpoints: a ``.ckpt`` with one more entry, ``finetune``::

      {"save_weights": "full" | "trainable", "init_from": path or None, "base_fingerprint": sha256 or None,
       "memory_layers": MemoryLayerConfig as a dict or None, "structure": {"lora": {modules, rank, alpha}} or {},
       "method": {"class_path", "config"}, "method_state": the method's state_dict()}

  With ``save_weights: trainable`` the state dict leaves out every frozen parameter (for LoRA: the whole base
  model); they come back from ``init_from``, whose frozen weights must hash to ``base_fingerprint``.

``load_any`` takes all three; ``load_model`` the first two; ``load_finetuned`` the third.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from hope.config import ModelConfig
from hope.layers.lora import apply_lora, remove_lora
from hope.layers.memory_layer import MemoryLayerConfig, swap_mlp_for_memory
from hope.model import HopeLM

log = logging.getLogger(__name__)

# -- writing ------------------------------------------------------------------------------------------------------


def _atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(file)`` on ``<path>.tmp``, fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    _atomic_write(path, lambda f: f.write(data))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    _atomic_write(path, lambda f: torch.save(obj, f))


# -- finding files ------------------------------------------------------------------------------------------------


def is_complete(path: Path) -> bool:
    """Whether a checkpoint was written to its end: a torch zip archive with its closing directory record (a file
    cut short by a crash has none), or a DeepSpeed checkpoint folder with its ``latest`` file."""
    return (path / "latest").is_file() if path.is_dir() else zipfile.is_zipfile(path)


def _written_at(path: Path) -> int:
    """Modification time of a checkpoint file, or of the newest file in a DeepSpeed checkpoint folder."""
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return max((p.stat().st_mtime_ns for p in files), default=0)


def newest_checkpoint(*folders: str | os.PathLike) -> Path | None:
    """The most recently written complete ``*.ckpt`` in ``folders`` (``last.ckpt``, ``step*.ckpt``,
    ``hpc_ckpt_*.ckpt``), or None. Incomplete ones (a ``.tmp`` never counts) are skipped with a warning."""
    candidates = {p for folder in folders if Path(folder).is_dir() for p in Path(folder).glob("*.ckpt")}
    for path in sorted(candidates, key=_written_at, reverse=True):
        if is_complete(path):
            return path
        log.warning("skipping %s: the file is incomplete (cut short while it was written)", path)
    return None


def run_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` itself, or for a run directory (``trainer.default_root_dir``) or its ``checkpoints`` folder the
    newest complete checkpoint in it (normally ``checkpoints/last.ckpt``)."""
    path = Path(path)
    if not path.is_dir() or is_complete(path):
        return path
    found = newest_checkpoint(path / "checkpoints", path)
    if found is None:
        raise FileNotFoundError(
            f"{str(path)!r} is a directory with no complete checkpoint in it or in its checkpoints/ folder. "
            f"Pass a checkpoint file, e.g. {str(path / 'checkpoints' / 'last.ckpt')!r}."
        )
    log.info("%s is a run directory: using its newest checkpoint %s", path, found)
    return found


# -- reading files ------------------------------------------------------------------------------------------------


def _require_file(path: Path) -> None:
    if path.is_dir():
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} is a directory, not a checkpoint file. For a run directory pass "
            f"{str(path / 'checkpoints' / 'last.ckpt')!r}; a DeepSpeed checkpoint folder needs `hope convert` first."
        )
    if not path.is_file():
        present = sorted(p.name for p in path.parent.glob("*.ckpt")) if path.parent.is_dir() else []
        hint = f" Checkpoints in that folder: {present}." if present else ""
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist.{hint} Pass an existing checkpoint file.")


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """torch.load a checkpoint, turning a missing or unreadable file into an error that says what to do."""
    path = Path(path)
    _require_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for truncated zip archives
        raise ValueError(
            f"checkpoint {str(path)!r} is corrupt or truncated ({type(err).__name__}: {err}). Use another "
            "checkpoint of the same run (e.g. a step*.ckpt beside it)."
        ) from err


def model_state_dict_from(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Model weights from a Lightning ``.ckpt`` (keys under ``model.``) or a ``.safetensors`` file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        _require_file(path)
        try:
            return load_file(path)
        except Exception as err:
            raise ValueError(f"{str(path)!r} is not a readable safetensors file ({err}).") from err
    state = load_checkpoint_file(path).get("state_dict")
    if state is None:
        raise ValueError(f"{str(path)!r} has no 'state_dict'; is it a Lightning checkpoint written by `hope fit`?")
    return _model_weights(state)


def _model_weights(lightning_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``model.*`` entries of a LightningModule's state dict, without the prefix."""
    return {k.removeprefix("model."): v for k, v in lightning_state.items() if k.startswith("model.")}


def model_config_from(path: str | os.PathLike) -> ModelConfig:
    """The ModelConfig a checkpoint was trained with: stored in a ``.ckpt``, or ``model_config.yaml`` beside a
    ``.safetensors`` file (``hope convert`` writes both)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        beside = path.with_name("model_config.yaml")
        if not beside.is_file():
            raise FileNotFoundError(f"{str(beside)!r} is missing: a .safetensors file needs its model_config.yaml.")
        return ModelConfig.from_dict(yaml.safe_load(beside.read_text()))
    stored = load_checkpoint_file(path).get("model_config")
    if stored is None:
        raise ValueError(f"{str(path)!r} stores no model_config; was it written by `hope fit`?")
    return ModelConfig.from_dict(stored)


# -- weights into a model -----------------------------------------------------------------------------------------


def tied_aliases(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """``{alias: first name}`` for entries that are the same tensor as an earlier one (tied embeddings)."""
    first: dict[tuple, str] = {}
    aliases = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
    return aliases


def load_state(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load ``state`` (read from ``where``) into ``model``, with an error listing what does not fit."""
    own = model.state_dict()
    for alias, name in tied_aliases(own).items():  # files store a tied tensor once (safetensors requires it)
        if alias not in state and name in state:
            state[alias] = state[name]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"weights in {where!r} do not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatches {mismatched[:5]}. Use the same model preset/overrides (and model.memory_layers) the "
            "checkpoint was trained with (see model_config.yaml beside it)."
        )
    model.load_state_dict(state)


def load_model_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Initialise ``model`` from pretrained weights (not a resume: optimizer, step and data position start fresh)."""
    load_state(model, model_state_dict_from(path), str(path))


def load_model(path: str | os.PathLike) -> HopeLM:
    """A HopeLM with the config and weights of a ``hope fit`` ``.ckpt`` or a ``.safetensors``, in eval mode, on CPU."""
    model = HopeLM(model_config_from(path))
    load_model_weights(model, path)
    return model.eval()


# -- finetuned checkpoints ----------------------------------------------------------------------------------------


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


def load_any(path: str | os.PathLike) -> HopeLM:
    """The ``HopeLM`` of any checkpoint, in eval mode on CPU: ``hope finetune`` checkpoints through
    ``load_finetuned`` (memory layers rebuilt, LoRA merged, frozen weights from the base), others ``load_model``."""
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
    load_state(model, state, str(path))
    if memory is not None and not has_memory:
        swap_mlp_for_memory(model, memory)


def load_finetuned(path: str | os.PathLike, base: str | os.PathLike | None = None, merge: bool = True) -> HopeLM:
    """The ``HopeLM`` of a ``hope finetune`` checkpoint, in eval mode on CPU.

    Memory layers are rebuilt; LoRA adapters are merged and removed (``merge=False`` keeps them, unmerged). A
    trainable-only checkpoint takes its frozen weights from ``base`` (default: the run's ``init_from``).
    """
    ckpt = load_checkpoint_file(path)
    info = ckpt.get("finetune")
    if info is None:
        raise ValueError(f"{str(path)!r} is not a `hope finetune` checkpoint; use hope.checkpoint.load_model.")
    model = HopeLM(model_config_from(path))
    memory = MemoryLayerConfig(**info["memory_layers"]) if info.get("memory_layers") else None
    trainable_only = info["save_weights"] == "trainable"
    if trainable_only:
        base = _base_of(path, base or info["init_from"])
        init_weights(model, base, memory)
    elif memory is not None:
        swap_mlp_for_memory(model, memory)
    lora = info.get("structure", {}).get("lora")
    if lora:
        apply_lora(model, lora["modules"], lora["rank"], lora["alpha"])
    state = _model_weights(ckpt["state_dict"])
    if trainable_only:
        check_base(model, state, info.get("base_fingerprint"), base)
        state = {**model.state_dict(), **state}
    model.load_state_dict(state)
    if lora and merge:
        remove_lora(model)
    return model.eval()


def _base_of(path: str | os.PathLike, base: str | os.PathLike | None) -> str | os.PathLike:
    """The base checkpoint a trainable-only checkpoint takes its frozen weights from, or a clear error."""
    if base is None:
        raise ValueError(f"{str(path)!r} stores trainable weights only and names no base; pass `base`.")
    if not Path(base).is_file():
        raise FileNotFoundError(
            f"{str(path)!r} stores trainable weights only (model.save_weights: trainable); its frozen weights "
            f"come from the base {str(base)!r} (the run's init_from), which does not exist here (relative paths "
            "are from the directory `hope finetune` ran in). Fix: run from that directory, pass `base` to "
            "load_finetuned, or finetune with model.save_weights: full."
        )
    return base


def check_base(model: nn.Module, saved: dict[str, torch.Tensor], fingerprint: str | None, base) -> None:
    """The frozen weights the model has now (from ``base``) must be those the trainable-only checkpoint was
    trained on: otherwise the adapters would be applied to other weights without any error."""
    frozen = {n: p for n, p in model.named_parameters() if n not in saved}
    if fingerprint is not None and weights_fingerprint(frozen) != fingerprint:
        raise ValueError(
            f"the frozen weights from {str(base)!r} differ from those this trainable-only checkpoint was "
            "trained on; pass the same init_from / base checkpoint."
        )
