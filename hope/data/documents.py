"""Documents of any data source as ``(key, text)`` pairs, optionally one split of it: what evaluations score and
what finetuning methods sample (EWC's Fisher data, replay's general data)."""

from __future__ import annotations

import logging

from hope.data.sources import is_validation, iter_documents, source_kind

log = logging.getLogger(__name__)

SPLITS = ("auto", "val", "train", "all")


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
    encoding: str | None = None,
) -> list[tuple[str, str]]:
    """``(key, text)`` documents of a source (any ``hope.data.sources`` spec), optionally one split of it.

    ``split``: ``val``/``train`` keep the documents ``is_validation(key, val_fraction)`` puts in that split (the
    same held-out documents ``hope fit`` validates on with the same ``val_fraction``), ``all`` keeps every one,
    and ``auto`` means ``val`` for the default corpus and ``all`` for anything else. ``max_documents`` counts
    documents after the split filter. Empty documents are dropped. ``encoding``: codec of local text/JSON files
    (``None``: UTF-8 or a byte-order mark; see ``hope.data.encoding``).
    """
    split = resolve_split(source, split)
    docs = []
    for key, text in iter_documents(source, text_field, field="--source", encoding=encoding):
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
