"""Which encoding a local text or JSON file is in, or a clear error before it is read as something else.

Text read with the wrong encoding does not fail: with ``errors="replace"`` a Latin-1 file turns every accented
letter into U+FFFD, a UTF-16 file without a byte-order mark decodes "successfully" as UTF-8 with a NUL after every
character, and a binary file becomes noise, and the model trains on that. ``file_encoding`` reads the file once:

- a byte-order mark decides (UTF-8, UTF-16 or UTF-32, little or big endian) and is honoured;
- otherwise the file must be UTF-8: the share of bytes that do not decode, plus NUL bytes (never in text, always
  in UTF-16 and in binaries), is measured. Above ``MAX_BAD_SHARE`` it is an error naming the file, the share and
  ``data.encoding``; below it (a few stray bytes in a large corpus) a warning, and those bytes become U+FFFD;
- ``data.encoding`` (any Python codec name, e.g. ``latin-1``, ``cp1252``, ``utf-16-le``) skips the detection.
"""

from __future__ import annotations

import codecs
import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["MAX_BAD_SHARE", "file_encoding"]

MAX_BAD_SHARE = 1e-3
"""Share of undecodable or NUL bytes above which a file is an error rather than a warning (0.1%)."""

# Longest first: the UTF-32-LE mark starts with the UTF-16-LE one.
_BOMS = [
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
]
_CHUNK = 16 << 20
_ESCAPED = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of a byte that does not decode


def _bad_bytes(path: Path) -> tuple[int, int, int, int]:
    """``(size, undecodable bytes, NUL bytes at even offsets, NUL bytes at odd offsets)`` of a file read as UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    size = bad = nul_even = nul_odd = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            text = decoder.decode(chunk)
            bad += len(_ESCAPED.findall(text))
            nul_even += chunk[(size % 2) :: 2].count(0)
            nul_odd += chunk[1 - size % 2 :: 2].count(0)
            size += len(chunk)
    text = decoder.decode(b"", final=True)
    return size, bad + len(_ESCAPED.findall(text)), nul_even, nul_odd


def file_encoding(path: Path, encoding: str | None = None, field: str = "data.source") -> str:
    """The codec to read ``path`` with: ``encoding`` if given, else from its byte-order mark, else UTF-8, which
    it must then be (see the module docstring)."""
    key = "--encoding" if field.startswith("--") else "data.encoding"
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError as err:
            raise ValueError(
                f"{key}={encoding!r} is not a codec Python knows. Fix: e.g. utf-8, latin-1, cp1252, utf-16."
            ) from err
        return encoding
    with open(path, "rb") as f:
        head = f.read(4)
    for bom, codec in _BOMS:
        if head.startswith(bom):
            return codec
    size, bad, nul_even, nul_odd = _bad_bytes(path)
    share = (bad + nul_even + nul_odd) / max(size, 1)
    if share == 0:
        return "utf-8"
    if max(nul_even, nul_odd) > size / 4:
        endian = "le" if nul_odd > nul_even else "be"
        hint = f"NUL bytes at every other position: UTF-16 without a byte-order mark; set {key} utf-16-{endian}"
    else:
        hint = f"another encoding (Latin-1, Windows-1252, ...) or a binary file; set {key}, e.g. latin-1"
    message = (
        f"{field}: {path} is not UTF-8: {share:.2%} of its {size:,} bytes do not decode as UTF-8 or are NUL "
        f"({hint}), or convert the file to UTF-8 (iconv -f latin1 -t utf-8)."
    )
    if share > MAX_BAD_SHARE:
        raise ValueError(message)
    log.warning("%s Reading it as UTF-8 with those bytes replaced by U+FFFD.", message)
    return "utf-8"
