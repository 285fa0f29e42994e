"""Documents (plain strings) from a source spec string.

A source spec is one of:

- ``"default"``: the built-in default corpus, described below.
- A local file or folder. ``.txt``/``.md``/``.text`` files are one document per file, ``.jsonl``/``.json``
  and ``.parquet`` files give one document per row, taken from the ``text_field`` column (default ``"text"``).
  A folder means every matching file under it, recursively, in sorted order. All of them are read with
  ``datasets.load_dataset("text"|"json"|"parquet", data_files=..., streaming=True)``, so local files and
  hub datasets share one code path and nothing is copied into the ``datasets`` cache. Text and JSON files must be
  UTF-8 or carry a byte-order mark, or ``encoding`` must name their codec (``hope.data.encoding``); a line of a
  ``.jsonl`` file that is not JSON is an error naming the file and the line, and a text column that holds
  something else than strings an error naming the column and the type.
- Anything else is a Hugging Face hub dataset: ``name``, ``name:config`` or ``name:config@split``
  (default split ``train``), streamed with ``datasets.load_dataset(name, config, split=..., streaming=True)``.
  A stream can be unbounded: bound it with ``max_documents`` (here) or ``max_tokens`` (in the cache builder).

The default corpus is the ``.py`` source of the running Python's standard library
(``sysconfig.get_paths()["stdlib"]``, without ``site-packages``, ``dist-packages`` and ``__pycache__``): one
file is one document, in sorted order of relative path. It is about 31 MB in 1,790 files on CPython 3.11, it
exists offline on every machine with Python, and it needs no download or licence step, which makes it a good
corpus for debug runs and tests. It is code, so a model trained on it learns Python, not English; its exact
content depends on the Python version (the cache key includes it).

Validation split: a document goes to validation when a stable hash of its key falls below ``val_fraction``
(see ``is_validation``). The key is the relative path for the default corpus, so the ~1% held-out files stay
the same when files are added, and the document index for other sources.
"""

import hashlib
import json
import os
import sys
import sysconfig
from collections.abc import Iterator
from itertools import groupby
from pathlib import Path

import datasets

from hope.data.encoding import file_encoding

TEXT_SUFFIXES = (".txt", ".md", ".text")
JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
_BUILDERS = {**dict.fromkeys(TEXT_SUFFIXES, "text"), **dict.fromkeys(JSON_SUFFIXES, "json"), ".parquet": "parquet"}
_EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}

Document = tuple[str, str]
"""``(key, text)``: ``key`` decides the train/validation split (see ``is_validation``)."""


def default_corpus_files() -> list[tuple[str, Path]]:
    """``(relative path, absolute path)`` of every file in the default corpus, sorted by relative path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _EXCLUDED_DIRS]
        for name in filenames:
            if name.endswith(".py"):
                path = Path(dirpath, name)
                files.append((path.relative_to(root).as_posix(), path))
    return sorted(files)


def is_validation(key: str, val_fraction: float) -> bool:
    """Whether the document with this key belongs to the validation split.

    A stable hash (not Python's salted ``hash``) so every process and machine agrees on the split.
    """
    if val_fraction <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return h / 2**64 < val_fraction


def source_kind(spec: str, field: str = "data.source") -> str:
    """``"default"``, ``"local"`` or ``"hub"`` for a source spec; a path that does not exist raises ValueError."""
    if spec == "default":
        return "default"
    path = Path(spec).expanduser()
    if path.exists():
        return "local"
    # A hub name is "owner/name[:config][@split]"; anything that looks like a file path is a missing file.
    if spec.startswith(("/", ".", "~")) or path.suffix in _BUILDERS or spec.count("/") > 1:
        raise ValueError(
            f"{field}={spec!r}: no such file or folder (looked for {path.resolve()}). "
            f"Fix: give an existing text/jsonl/parquet file or folder, a hub dataset name, or 'default'."
        )
    return "hub"


def local_files(path: Path, field: str = "data.source") -> list[Path]:
    """The readable files at a local path: the file itself, or every matching file under a folder."""
    if path.is_file():
        if path.suffix not in _BUILDERS:
            raise ValueError(
                f"{field}={str(path)!r}: unsupported file type {path.suffix!r}. "
                f"Fix: use one of {', '.join(sorted(_BUILDERS))}."
            )
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _BUILDERS)
    if not files:
        raise ValueError(
            f"{field}={str(path)!r}: the folder has no files ending in {', '.join(sorted(_BUILDERS))}. "
            f"Fix: point it at a folder of text/jsonl/parquet files."
        )
    return files


def parse_hub_spec(spec: str) -> tuple[str, str | None, str]:
    """``"name[:config][@split]"`` -> ``(name, config, split)``; the split defaults to ``"train"``."""
    spec, _, split = spec.partition("@")
    name, _, config = spec.partition(":")
    return name, config or None, split or "train"


def source_fingerprint(spec: str, field: str = "data.source") -> str:
    """What identifies the content of a source, for cache keys.

    Local files count by path, size and modification time, the default corpus by Python version and file list;
    hub datasets only by name (a remote dataset that changes under the same name is not detected).
    """
    kind = source_kind(spec, field)
    if kind == "default":
        files = default_corpus_files()
        listing = [(rel, p.stat().st_size) for rel, p in files]
        return f"default|{sys.version}|{_digest(repr(listing))}"
    if kind == "local":
        files = local_files(Path(spec).expanduser(), field)
        listing = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        return f"local|{_digest(repr(listing))}"
    return f"hub|{spec}"


def iter_documents(
    spec: str,
    text_field: str = "text",
    max_documents: int | None = None,
    field: str = "data.source",
    encoding: str | None = None,
) -> Iterator[Document]:
    """Yield ``(key, text)`` for every document of a source, in a deterministic order.

    Args:
        spec: the source spec (see the module docstring).
        text_field: column holding the text in json/jsonl/parquet files and hub datasets.
        max_documents: stop after this many documents (``None``: all of them).
        field: the config field the spec came from, for error messages.
        encoding: codec of local text/JSON files (``None``: UTF-8, or what a byte-order mark says).
    """
    kind = source_kind(spec, field)
    if kind == "default":
        docs = _default_documents()
    elif kind == "local":
        docs = _local_documents(local_files(Path(spec).expanduser(), field), text_field, encoding, field)
    else:
        docs = hub_documents(spec, text_field, field)
    for i, doc in enumerate(docs):
        if max_documents is not None and i >= max_documents:
            return
        yield doc


def _default_documents() -> Iterator[Document]:
    for rel, path in default_corpus_files():
        # A few stdlib test files are deliberately not UTF-8; replace rather than skip them.
        yield rel, path.read_text(encoding="utf-8", errors="replace")


def _local_documents(files: list[Path], text_field: str, encoding: str | None, field: str) -> Iterator[Document]:
    index = 0
    # Empty files hold no documents, and datasets' json builder crashes on them (StopIteration).
    files = [p for p in files if p.stat().st_size > 0]
    codecs = {p: None if _BUILDERS[p.suffix] == "parquet" else file_encoding(p, encoding, field) for p in files}
    # One load_dataset call per run of files of the same type and encoding, keeping the sorted file order.
    for (builder, codec), group in groupby(files, key=lambda p: (_BUILDERS[p.suffix], codecs[p])):
        data_files = [str(p) for p in group]
        kwargs = {"encoding": codec, "encoding_errors": "replace"} if codec is not None else {}
        if builder == "text":
            kwargs |= {"sample_by": "document", "keep_linebreaks": True}
        ds = datasets.load_dataset(builder, data_files=data_files, split="train", streaming=True, **kwargs)
        column = "text" if builder == "text" else text_field
        try:
            for text in _texts(ds, column, ", ".join(data_files)):
                yield str(index), text
                index += 1
        except ValueError as err:  # pyarrow's ArrowInvalid is one: name the file and line instead
            if builder != "json" or (bad := _first_bad_json_line(data_files, codec)) is None:
                raise
            raise ValueError(bad) from err


def _first_bad_json_line(files: list[str], codec: str) -> str | None:
    """``FILE, line N: ...`` for the first line of these JSON Lines files that is not a JSON object, or None."""
    for name in files:
        with open(name, encoding=codec, errors="replace") as f:
            if f.read(1) == "[":
                continue  # one JSON array, not JSON Lines: pyarrow's own message stands
            f.seek(0)
            for number, line in enumerate(f, start=1):
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    problem = f"not valid JSON ({err.msg} at column {err.colno})"
                else:
                    if isinstance(row, dict):
                        continue
                    problem = f"a JSON {type(row).__name__}, not an object"
                return (
                    f"{name}, line {number}: {problem}: {line[:80]!r}. Fix: each line of a .jsonl file must "
                    'be one JSON object such as {"text": "..."}; repair or delete that line.'
                )
    return None


def hub_documents(spec: str, text_field: str = "text", field: str = "data.source") -> Iterator[Document]:
    """Stream the documents of a hub dataset ``name[:config][@split]`` (or of a local dataset folder)."""
    name, config, split = parse_hub_spec(spec)
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as e:  # datasets raises many types here (offline, not found, bad config, auth)
        raise ValueError(
            f"{field}={spec!r} is not a local file or folder (looked for {Path(spec).resolve()}) and could not be "
            f"loaded as a hub dataset 'name[:config][@split]': {type(e).__name__}: {e}. Fix: give an existing "
            f"path, 'default', or a reachable dataset name (offline machines need a local copy)."
        ) from e
    for i, text in enumerate(_texts(ds, text_field, spec)):
        yield str(i), text


def _texts(ds, column: str, where: str) -> Iterator[str]:
    """The ``column`` of every row of a streamed dataset, with a clear error if the column is missing or holds
    something else than text (``None`` counts as an empty document)."""
    for number, row in enumerate(ds):
        if column not in row:
            raise ValueError(
                f"data.text_field={column!r}: no such column in {where} (columns: {sorted(row)}). "
                f"Fix: set data.text_field to the column that holds the text."
            )
        text = row[column]
        if text is not None and not isinstance(text, str):
            raise ValueError(
                f"data.text_field={column!r} in {where}: row {number} holds a {type(text).__name__} "
                f"({str(text)[:40]!r}), not text. Fix: set data.text_field to a column of strings."
            )
        yield text or ""


def _digest(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()[:16]
