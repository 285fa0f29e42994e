"""What every evaluation starts from: a checkpoint's model on a device, its tokenizer, and documents to score."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import yaml

from hope.data.sources import is_validation, iter_documents, source_kind
from hope.finetune.checkpoint import load_any
from hope.tokenizer import Tokenizer

log = logging.getLogger(__name__)

SPLITS = ("auto", "val", "train", "all")


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
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_for_eval(checkpoint: str | Path, tokenizer: str | None = None, device: str | None = None):
    """``(model in eval mode on device, tokenizer)``; the tokenizer must fit the model's vocabulary.

    ``checkpoint``: a ``hope fit`` or ``hope finetune`` ``.ckpt`` (memory layers rebuilt, LoRA adapters merged, a
    trainable-only checkpoint's frozen weights read from its ``init_from``), or a ``.safetensors`` file.
    """
    model = load_any(checkpoint).to(device or default_device())
    tok = resolve_tokenizer(checkpoint, tokenizer)
    tok.check_fits(model.config.vocab_size)
    return model, tok


def resolve_split(source: str, split: str) -> str:
    """``auto`` -> ``val`` for the default corpus (its held-out files), ``all`` for any other source."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: choose one of {SPLITS}")
    if split == "auto":
        return "val" if source_kind(source, "--source") == "default" else "all"
    return split


def load_documents(
    source: str = "default",
    split: str = "auto",
    max_documents: int | None = None,
    val_fraction: float = 0.01,
    text_field: str = "text",
) -> list[tuple[str, str]]:
    """``(key, text)`` documents of a source (any ``hope.data.sources`` spec), optionally one split of it.

    ``split``: ``val``/``train`` keep the documents ``is_validation(key, val_fraction)`` puts in that split (the
    same held-out documents ``hope fit`` validates on with the same ``val_fraction``), ``all`` keeps every one,
    and ``auto`` means ``val`` for the default corpus and ``all`` for anything else. ``max_documents`` counts
    documents after the split filter. Empty documents are dropped.
    """
    split = resolve_split(source, split)
    docs = []
    for key, text in iter_documents(source, text_field=text_field, field="--source"):
        if split != "all" and is_validation(key, val_fraction) != (split == "val"):
            continue
        if text:
            docs.append((key, text))
        if max_documents is not None and len(docs) >= max_documents:
            break
    if not docs:
        raise ValueError(
            f"no documents in the {split!r} split of --source={source!r} (val_fraction={val_fraction}). "
            "Fix: use --split all, a larger --val_fraction, or another source."
        )
    log.info("evaluating on %d documents of %s (%s split)", len(docs), source, split)
    return docs
