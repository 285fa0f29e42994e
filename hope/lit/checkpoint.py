"""Checkpoint I/O that never leaves a half-written file, and loading weights with clear errors.

``AtomicCheckpointIO`` writes ``<path>.tmp`` then ``os.replace``s it, so a run killed mid-save keeps the previous
good file and ``--ckpt_path last`` resumes from it. ``ConfigCheckpoint`` (a ModelCheckpoint) also writes the run's
resolved CLI config and the model config beside every checkpoint, so a checkpoint directory is self-describing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import yaml
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _require_file(path: Path) -> None:
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
            f"checkpoint {str(path)!r} is corrupt or truncated ({type(err).__name__}: {err}). Resume from an "
            "earlier checkpoint in the same directory, or delete this file."
        ) from err


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None):
        return load_checkpoint_file(path)


class ConfigCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that also writes ``config.yaml`` (the resolved CLI config, set by the CLI) and
    ``model_config.yaml`` beside the checkpoints.

    Without ``dirpath`` it saves to ``<trainer.default_root_dir>/checkpoints`` rather than inside the logger's
    versioned folder, so a restarted run finds its ``last.ckpt`` (``--ckpt_path last``) in the same place.
    """

    resolved_config: str | None = None

    def _default_dirpath(self, trainer) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._default_dirpath(trainer)
        super().setup(trainer, pl_module, stage)

    def _find_last_checkpoints(self, trainer) -> set[str]:
        self._default_dirpath(trainer)
        return super()._find_last_checkpoints(trainer)

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if not trainer.is_global_zero:
            return
        folder = Path(filepath).parent
        model_config = getattr(trainer.lightning_module, "config", None)
        if model_config is not None:
            atomic_write_bytes(folder / "model_config.yaml", yaml.safe_dump(model_config.to_dict()).encode())
        if self.resolved_config is not None:
            atomic_write_bytes(folder / "config.yaml", self.resolved_config.encode())


def model_state_dict_from(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Model weights from a Lightning ``.ckpt`` (keys under ``model.``) or a ``.safetensors`` file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        _require_file(path)
        try:
            return load_file(path)
        except Exception as err:
            raise ValueError(f"{str(path)!r} is not a readable safetensors file ({err}).") from err
    state = load_checkpoint_file(path).get("state_dict")
    if state is None:
        raise ValueError(f"{str(path)!r} has no 'state_dict'; is it a Lightning checkpoint written by `hope fit`?")
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


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


def load_model_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Initialise ``model`` from pretrained weights (not a resume: optimizer, step and data position start fresh)."""
    state = model_state_dict_from(path)
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
            f"weights in {str(path)!r} do not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatches {mismatched[:5]}. Use the same model preset/overrides the checkpoint was trained with "
            "(see model_config.yaml beside it)."
        )
    model.load_state_dict(state)


def model_config_from(path: str | os.PathLike):
    """The ModelConfig a checkpoint was trained with: stored in a ``.ckpt``, or ``model_config.yaml`` beside a
    ``.safetensors`` file (``hope convert`` writes both)."""
    from hope.config import ModelConfig

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


def load_model(path: str | os.PathLike):
    """A HopeLM with the config and weights of a checkpoint (``.ckpt`` or ``.safetensors``), in eval mode, on CPU."""
    from hope.model import HopeLM

    model = HopeLM(model_config_from(path))
    load_model_weights(model, path)
    return model.eval()
