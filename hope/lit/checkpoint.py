"""Lightning's side of checkpoints: writes that never leave a half-written file, and a config beside each one.

``AtomicCheckpointIO`` writes ``<path>.tmp`` then ``os.replace``s it, so a run killed mid-save keeps the previous
good file and ``--ckpt_path last`` resumes from it; it refuses to write weights that are not finite (a diverged run
must not replace its last good checkpoint). ``ConfigCheckpoint`` (a ModelCheckpoint) also writes the run's
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

from hope.checkpoint import atomic_torch_save, atomic_write_bytes, load_checkpoint_file, newest_checkpoint


def non_finite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold a NaN or an infinity."""
    return [
        name
        for name, value in state.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()
    ]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Torch checkpoint I/O whose local writes are atomic (``<path>.tmp``, then ``os.replace``) and never hold
    non-finite weights."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to a local ``path`` atomically (other filesystems go through Lightning's own save);
        refuse one whose weights are not all finite."""
        state = checkpoint.get("state_dict", {})
        bad = non_finite_tensors(state)
        if bad:
            raise ValueError(
                f"refusing to write checkpoint {str(path)!r}: {len(bad)} of {len(state)} weight tensors are not "
                f"finite (first: {bad[0]}). The previous checkpoints are left as they are."
            )
        if not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None):
        """The checkpoint at ``path`` on the CPU, with an actionable error if it is missing or truncated."""
        return load_checkpoint_file(path)


class ConfigCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that also writes ``config.yaml`` (the resolved CLI config, set by the CLI) and
    ``model_config.yaml`` beside the checkpoints.

    Without ``dirpath`` it saves to ``<trainer.default_root_dir>/checkpoints`` rather than inside the logger's
    versioned folder, so a restarted run finds its ``last.ckpt`` (``--ckpt_path last``) in the same place.
    ``--ckpt_path last`` resumes from the newest complete checkpoint there (or an ``hpc_ckpt_*.ckpt`` in the run
    directory): after a kill while ``last.ckpt`` was being rewritten, that is the ``step*.ckpt`` saved just before.
    A resumed run keeps writing ``last.ckpt``, also in a copied or moved run folder (Lightning would start
    ``last-v1.ckpt`` there).
    """

    resolved_config: str | None = None

    def _default_dirpath(self, trainer) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Default ``dirpath`` to ``<default_root_dir>/checkpoints``, then Lightning's setup."""
        self._default_dirpath(trainer)
        super().setup(trainer, pl_module, stage)

    def _find_last_checkpoints(self, trainer) -> set[str]:
        self._default_dirpath(trainer)
        newest = newest_checkpoint(self.dirpath, trainer.default_root_dir)
        return {str(newest)} if newest is not None else set()

    def on_train_start(self, trainer, pl_module) -> None:
        """A resumed run keeps writing this folder's ``last.ckpt`` (see the class docstring)."""
        super().on_train_start(trainer, pl_module)
        # Lightning restores last_model_path only from a checkpoint of the same folder and checkpoint.* settings;
        # otherwise (a copied run folder) it would write last-v1.ckpt beside the last.ckpt it resumed from.
        if trainer.ckpt_path is not None and self.save_last:
            self.last_model_path = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)

    def save_last_now(self, trainer) -> str:
        """Save ``last.ckpt`` at this step (a signal's checkpoint, the one ``--ckpt_path last`` resumes); its path."""
        self._default_dirpath(trainer)
        self.last_model_path = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
        self._save_checkpoint(trainer, self.last_model_path)
        return self.last_model_path

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
