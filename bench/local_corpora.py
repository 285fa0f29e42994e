"""Real-text corpora from this machine's own files, for experiments that need text other than the default corpus.

    python bench/local_corpora.py --out runs/corpora                       # every domain, up to 4 MB each
    python bench/local_corpora.py --out runs/corpora --domains info vim --max_mb 2
    hope fit --config configs/pretrain/debug.yaml --data.source runs/corpora/changelogs/

Each domain becomes a folder of ``.txt`` files, one document per file, which every ``data.source`` and ``--source``
reads (``hope fit`` holds out its validation documents by a stable hash of the file name); ``manifest.json`` lists
the domains with their document and byte counts and where they came from. Nothing is downloaded.

The domains (all English or structured text that the default corpus, the Python standard library, does not hold):

- ``info``: GNU info manuals (``/usr/share/info``), one document per node;
- ``changelogs``: Debian package changelogs (``/usr/share/doc/*/changelog.Debian.gz``), one per package;
- ``locales``: glibc locale definitions (``/usr/share/i18n/locales``), one per locale;
- ``vim``: Vim's help files (``/usr/share/vim/vim*/doc/*.txt``), one per file;
- ``cmake``: CMake's modules (``/usr/share/cmake*/Modules/*.cmake``), one per file (a code domain that is not Python).

Left out on purpose: ``/usr/include``, the copyright files under ``/usr/share/doc``, ``/usr/share/perl`` and man
pages, which the project keeps for held-out checks. A domain whose files are missing on a machine is skipped with a
message; the documents are taken in sorted path order, so the same machine always gives the same corpus.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path

MIN_CHARS = 200  # shorter documents (index nodes, stubs) teach little


def _read(path: Path) -> str:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return raw.decode("utf-8", errors="replace")


# the marker an info index node carries, "\0\b[index\0\b]": its NUL bytes would make the text fail the UTF-8 check
# of hope's data loading (a NUL is binary), and it is not prose
INFO_COOKIE = re.compile("\x00\x08\\[[^\x00]*\x00\x08\\]")


def info_nodes(root: Path) -> Iterator[tuple[str, str]]:
    """Nodes of the GNU info manuals: info files separate nodes with the 0x1f byte; index markers removed."""
    for path in sorted(root.glob("*.info*")):
        for i, node in enumerate(_read(path).split("\x1f")):
            yield f"{path.name.split('.info')[0]}-{i:04d}", INFO_COOKIE.sub("", node).replace("\x00", "").strip()


def changelogs(root: Path) -> Iterator[tuple[str, str]]:
    """Debian changelogs, one per package (the copyright files beside them are never read)."""
    for path in sorted(root.glob("*/changelog.Debian.gz")):
        yield path.parent.name, _read(path)


def files(pattern: str) -> Iterator[tuple[str, str]]:
    """Every file matching an absolute glob ``pattern``, named by its stem."""
    for path in sorted(Path("/").glob(pattern.lstrip("/"))):
        if path.is_file():
            yield re.sub(r"[^A-Za-z0-9_.-]+", "_", str(path.relative_to("/"))), _read(path)


DOMAINS = {
    "info": lambda: info_nodes(Path("/usr/share/info")),
    "changelogs": lambda: changelogs(Path("/usr/share/doc")),
    "locales": lambda: files("/usr/share/i18n/locales/*"),
    "vim": lambda: files("/usr/share/vim/vim*/doc/*.txt"),
    "cmake": lambda: files("/usr/share/cmake*/Modules/*.cmake"),
}


def write_domain(documents: Iterator[tuple[str, str]], folder: Path, max_bytes: int) -> dict:
    """Write documents of at least MIN_CHARS characters to ``folder/<name>.txt``, in order, while they fit in
    ``max_bytes``."""
    folder.mkdir(parents=True, exist_ok=True)
    count = size = 0
    for name, text in documents:
        if len(text) < MIN_CHARS:
            continue
        data = text.encode()
        if size + len(data) > max_bytes:
            continue  # a document that does not fit any more; smaller ones may
        (folder / f"{name}.txt").write_bytes(data)
        count, size = count + 1, size + len(data)
    return {"documents": count, "bytes": size}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/corpora", help="one folder per domain goes here")
    parser.add_argument("--domains", nargs="*", default=list(DOMAINS), choices=list(DOMAINS))
    parser.add_argument("--max_mb", type=float, default=4.0, help="at most this many MB of text per domain")
    args = parser.parse_args(argv)
    manifest = {}
    for domain in args.domains:
        stats = write_domain(DOMAINS[domain](), Path(args.out) / domain, int(args.max_mb * 2**20))
        if stats["documents"] == 0:
            print(f"{domain}: no files on this machine, skipped")
            continue
        manifest[domain] = stats
        print(f"{domain}: {stats['documents']} documents, {stats['bytes'] / 2**20:.2f} MB -> {Path(args.out) / domain}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


if __name__ == "__main__":
    main()
