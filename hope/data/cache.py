"""Tokenize a source once and keep the token streams on disk.

Layout: ``<cache_dir>/<name>-<key>/{train.bin, val.bin, meta.json}``. The ``.bin`` files are the packed streams
(``hope.data.packing``) as raw uint16 (uint32 for vocabularies over 65536), loaded back as read-only memmaps.
``key`` hashes everything that changes the tokens: the source spec and a fingerprint of its content, the split
and size options, the tokenizer's fingerprint and ``FORMAT_VERSION``.

A cache is built in a temporary folder next to it and renamed into place in one step, so a killed run never
leaves a half-written cache that looks valid (only a ``.tmp-*`` folder, which is ignored and safe to delete),
and several processes building the same cache at once end with one complete copy.
"""

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from hope.data.packing import pack_documents, token_dtype
from hope.data.sources import is_validation, iter_documents, source_fingerprint, source_kind
from hope.tokenizer import Tokenizer

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLITS = ("train", "val")
_BATCH_BYTES = 4 << 20  # tokenize ~4 MB of text per sentencepiece batch call: enough work for every thread
_LOG_EVERY_S = 5.0


def default_cache_dir() -> Path:
    """``$HOPE_CACHE`` if set, else ``~/.cache/hope``."""
    return Path(os.environ.get("HOPE_CACHE") or Path.home() / ".cache" / "hope").expanduser()


def cache_path(source: str, tokenizer: Tokenizer, options: dict, cache_dir: str | Path | None, field: str) -> Path:
    """The folder where the cache of ``source`` with these ``options`` (``build_cache``'s keyword settings) and this
    tokenizer lives, whether or not it exists yet."""
    settings = {
        "format": FORMAT_VERSION,
        "source": source,
        "content": source_fingerprint(source, field),
        **options,
        "tokenizer": tokenizer.fingerprint,
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    # A readable prefix so people can tell cache folders apart.
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(source.rstrip("/")).name or source)[:40]
    return Path(cache_dir or default_cache_dir()).expanduser() / f"{name}-{key}"


def build_cache(
    source: str,
    tokenizer: Tokenizer,
    cache_dir: str | Path | None = None,
    val_fraction: float = 0.01,
    text_field: str = "text",
    max_documents: int | None = None,
    max_tokens: int | None = None,
    field: str = "data.source",
    encoding: str | None = None,
) -> Path:
    """Tokenize ``source`` into train/val streams unless a cache for these settings exists; return its folder.

    Args:
        source: a source spec (see ``hope.data.sources``).
        tokenizer: the tokenizer; its fingerprint is part of the cache key.
        cache_dir: parent folder of all caches (default: ``default_cache_dir()``).
        val_fraction: share of documents that go to ``val.bin`` (0: none, 1: all).
        text_field: text column of json/jsonl/parquet/hub data.
        max_documents: read at most this many documents of the source.
        max_tokens: stop after the document that brings both splits together to this many tokens.
        field: the config field ``source`` came from, for error messages.
        encoding: codec of local text/JSON files (``None``: UTF-8 or a byte-order mark; ``hope.data.encoding``).
    """
    options = {
        "val_fraction": val_fraction,
        "text_field": text_field,
        "max_documents": max_documents,
        "max_tokens": max_tokens,
    }
    if encoding is not None:  # only when set, so that the caches built before the option existed keep their key
        options["encoding"] = encoding
    final = cache_path(source, tokenizer, options, cache_dir, field)
    if (final / "meta.json").is_file():
        return final
    if source_kind(source, field) == "hub" and max_documents is None and max_tokens is None:
        log.warning(f"{field}={source!r} streams until the dataset ends: bound it with data.max_tokens")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a shared cache must stay readable by others
        t0 = time.perf_counter()
        docs = iter_documents(source, text_field, max_documents, field, encoding)
        splits = _write_splits(docs, tokenizer, tmp, val_fraction, max_tokens, source)
        meta = {
            "format": FORMAT_VERSION,
            "source": source,
            "options": options,
            "tokenizer": {"path": str(tokenizer.path), "fingerprint": tokenizer.fingerprint},
            "vocab_size": tokenizer.vocab_size,
            "dtype": token_dtype(tokenizer.vocab_size).name,
            "splits": splits,
            "build_seconds": round(time.perf_counter() - t0, 2),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished the same cache first: theirs is identical, keep it.
            if not (final / "meta.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    total = sum(s["n_tokens"] for s in splits.values())
    log.info(f"cached {total:,} tokens of {source!r} in {meta['build_seconds']} s at {final}")
    return final


def load_cache(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """``(meta, {"train": tokens, "val": tokens})`` of a built cache, tokens as read-only memmaps."""
    path = Path(path)
    meta = json.loads((path / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])
    tokens = {}
    for split in SPLITS:
        n = meta["splits"][split]["n_tokens"]
        # np.memmap cannot map an empty file.
        tokens[split] = np.memmap(path / f"{split}.bin", dtype=dtype, mode="r") if n else np.zeros(0, dtype)
    return meta, tokens


def _write_splits(
    docs: Iterator[tuple[str, str]],
    tokenizer: Tokenizer,
    out: Path,
    val_fraction: float,
    max_tokens: int | None,
    source: str,
) -> dict[str, dict]:
    """Tokenize ``docs`` batch by batch, appending each split's packed tokens to ``out/<split>.bin``."""
    dtype = token_dtype(tokenizer.vocab_size)
    stats = {s: {"n_tokens": 0, "n_documents": 0, "bytes": 0} for s in SPLITS}
    files = {s: open(out / f"{s}.bin", "wb") for s in SPLITS}  # noqa: SIM115 (closed in finally)
    t0 = last_log = time.perf_counter()
    try:
        for batch in _batches(docs):
            ids = tokenizer.encode_batch([text for _, text in batch], bos=False, eos=False)
            routed: dict[str, list[list[int]]] = {s: [] for s in SPLITS}
            done = False
            for (key, text), doc_ids in zip(batch, ids, strict=True):
                split = "val" if is_validation(key, val_fraction) else "train"
                routed[split].append(doc_ids)
                st = stats[split]
                st["n_documents"] += 1
                st["bytes"] += len(text.encode("utf-8"))
                st["n_tokens"] += len(doc_ids) + (tokenizer.bos_id is not None) + (tokenizer.eos_id is not None)
                if max_tokens is not None and stats["train"]["n_tokens"] + stats["val"]["n_tokens"] >= max_tokens:
                    done = True
                    break
            for split, split_ids in routed.items():
                pack_documents(split_ids, tokenizer.bos_id, tokenizer.eos_id, dtype).tofile(files[split])
            now = time.perf_counter()
            if now - last_log > _LOG_EVERY_S:
                last_log = now
                mb = sum(s["bytes"] for s in stats.values()) / 1e6
                n = sum(s["n_tokens"] for s in stats.values())
                log.info(f"tokenizing {source!r}: {mb:.1f} MB, {n:,} tokens, {mb / (now - t0):.1f} MB/s")
            if done:
                break
    finally:
        for f in files.values():
            f.close()
    return stats


def _batches(docs: Iterator[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    """Group documents into lists of about ``_BATCH_BYTES`` characters."""
    docs = iter(docs)
    while True:
        batch, size = [], 0
        for doc in docs:
            batch.append(doc)
            size += len(doc[1])
            if size >= _BATCH_BYTES:
                break
        if not batch:
            return
        yield batch
