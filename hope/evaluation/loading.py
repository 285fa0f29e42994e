"""What every evaluation starts from: a checkpoint's model on a device and its tokenizer (documents to score come
from ``hope.data.documents``)."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from hope.checkpoint import load_any, run_checkpoint
from hope.tokenizer import Tokenizer


def checkpoint_tokenizer_path(checkpoint: str | Path) -> str | None:
    """``data.tokenizer`` from the ``config.yaml`` that ``hope fit`` writes beside its checkpoints, if any."""
    config = Path(checkpoint).with_name("config.yaml")
    if not config.is_file():
        return None
    data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
    return data.get("tokenizer")


def resolve_tokenizer(checkpoint: str | Path | None, tokenizer: str | None = None) -> Tokenizer:
    """``tokenizer`` if given, else the one the checkpoint was trained with (its ``config.yaml``), else the
    default tokenizer."""
    if tokenizer is None and checkpoint is not None:
        tokenizer = checkpoint_tokenizer_path(checkpoint)
        if tokenizer is not None and not Path(tokenizer).expanduser().is_file():
            raise FileNotFoundError(
                f"the checkpoint's config.yaml names tokenizer {tokenizer!r}, which does not exist here. "
                "Fix: pass --tokenizer PATH (the same .model the checkpoint was trained with)."
            )
    return Tokenizer(tokenizer) if tokenizer is not None else Tokenizer.default()


def default_device() -> str:
    """``"cuda"`` when a GPU is available, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_for_eval(checkpoint: str | Path, tokenizer: str | None = None, device: str | None = None):
    """``(model in eval mode on device, tokenizer)``; the tokenizer must fit the model's vocabulary.

    ``checkpoint``: a ``hope fit`` or ``hope finetune`` ``.ckpt`` (memory layers rebuilt, LoRA adapters merged, a
    trainable-only checkpoint's frozen weights read from its ``init_from``), a ``.safetensors`` file, or a run
    directory (its newest complete checkpoint, normally ``checkpoints/last.ckpt``).
    """
    checkpoint = run_checkpoint(checkpoint)
    model = load_any(checkpoint).to(device or default_device())
    tok = resolve_tokenizer(checkpoint, tokenizer)
    tok.check_fits(model.config.vocab_size)
    return model, tok
