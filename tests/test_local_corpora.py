"""bench/local_corpora.py: domains of this machine's own text, written as folders that data.source reads."""

import gzip
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))

from local_corpora import MIN_CHARS, changelogs, info_nodes, write_domain  # noqa: E402

from hope.data.sources import iter_documents  # noqa: E402


def test_info_nodes_and_changelogs_from_gzip(tmp_path):
    (tmp_path / "info").mkdir()
    node = "File: tool.info,  Node: Top\n" + "text " * 60
    (tmp_path / "info" / "tool.info.gz").write_bytes(gzip.compress(f"header\x1f{node}\x1f{node}".encode()))
    nodes = list(info_nodes(tmp_path / "info"))
    assert [name for name, _ in nodes] == ["tool-0000", "tool-0001", "tool-0002"] and nodes[1][1] == node.strip()
    (tmp_path / "doc" / "pkg").mkdir(parents=True)
    (tmp_path / "doc" / "pkg" / "changelog.Debian.gz").write_bytes(gzip.compress(b"pkg (1.0) unstable"))
    (tmp_path / "doc" / "pkg" / "copyright").write_text("never read")
    assert list(changelogs(tmp_path / "doc")) == [("pkg", "pkg (1.0) unstable")]


def test_info_index_markers_are_removed_so_the_folder_loads(tmp_path):
    """Index nodes carry "\\0\\b[index\\0\\b]": left in, their NUL bytes fail hope's UTF-8 check of the folder."""
    (tmp_path / "info").mkdir()
    node = "Index\n\x00\x08[index\x00\x08]\n* Menu:\n" + "* entry: node. (line 3)\n" * 20
    (tmp_path / "info" / "tool.info").write_text(f"header\x1f{node}")
    (_, text) = list(info_nodes(tmp_path / "info"))[1]
    assert "\x00" not in text and "[index" not in text and text.startswith("Index\n\n* Menu:")
    write_domain(info_nodes(tmp_path / "info"), tmp_path / "out", max_bytes=10_000)
    assert [doc for _, doc in iter_documents(str(tmp_path / "out"))][-1] == text


def test_write_domain_skips_short_documents_and_fills_the_budget(tmp_path):
    docs = [("a", "x" * MIN_CHARS), ("tiny", "short"), ("big", "y" * 5000), ("b", "z" * MIN_CHARS)]
    stats = write_domain(iter(docs), tmp_path / "d", max_bytes=3 * MIN_CHARS)
    assert stats == {"documents": 2, "bytes": 2 * MIN_CHARS}  # the big one does not fit, the next one does
    assert sorted(text[0] for _, text in iter_documents(str(tmp_path / "d"))) == ["x", "z"]
