"""Tests of hope.data: sources, packing and the token cache."""

import json
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from hope.data import cache as cache_module
from hope.data.cache import build_cache, load_cache
from hope.data.packing import PackedBlocks, collate_blocks, num_blocks, pack_documents, token_dtype
from hope.data.sources import default_corpus_files, hub_documents, is_validation, iter_documents, parse_hub_spec
from hope.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.default()


# -- packing -------------------------------------------------------------------------------------------------------


def test_pack_documents_exact():
    assert pack_documents([[5, 6], [7], []], bos_id=1, eos_id=2).tolist() == [1, 5, 6, 2, 1, 7, 2, 1, 2]
    assert pack_documents([[5, 6], [7]], bos_id=None, eos_id=2).tolist() == [5, 6, 2, 7, 2]
    assert pack_documents([], bos_id=1, eos_id=2).tolist() == []
    assert pack_documents([[70000]], 1, 2, np.uint32).dtype == np.uint32


def test_token_dtype():
    assert token_dtype(8192) == np.uint16
    assert token_dtype(65536) == np.uint16  # ids 0..65535
    assert token_dtype(65537) == np.uint32


def test_packed_blocks_indexing():
    blocks = PackedBlocks(np.arange(10, dtype=np.uint16), seq_len=3)
    assert len(blocks) == 3 == num_blocks(10, 3)
    assert [blocks[i].tolist() for i in range(3)] == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert blocks[0].dtype == torch.int64
    with pytest.raises(IndexError):
        blocks[3]
    assert num_blocks(4, 3) == 1 and num_blocks(3, 3) == 0 and num_blocks(0, 3) == 0
    with pytest.raises(ValueError, match="seq_len=0"):
        PackedBlocks(np.arange(10), seq_len=0)


def test_collate_blocks_shifts_labels():
    batch = collate_blocks([torch.tensor([0, 1, 2, 3]), torch.tensor([3, 4, 5, 6])])
    assert batch["input_ids"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert batch["labels"].tolist() == [[1, 2, 3], [4, 5, 6]]
    assert batch["labels"].is_contiguous()


# -- sources -------------------------------------------------------------------------------------------------------


def test_default_corpus():
    files = default_corpus_files()
    rels = [rel for rel, _ in files]
    assert rels == sorted(rels) and all(r.endswith(".py") for r in rels)
    assert not any(part in r for r in rels for part in ("site-packages", "dist-packages", "__pycache__"))
    assert sum(p.stat().st_size for _, p in files) >= 10e6
    n_val = sum(is_validation(r, 0.01) for r in rels)
    assert 0 < n_val < 0.05 * len(rels)
    key, text = next(iter_documents("default"))
    assert key == rels[0] and text == files[0][1].read_text(encoding="utf-8", errors="replace")


def test_is_validation_is_stable_and_proportional():
    keys = [str(i) for i in range(20_000)]
    share = sum(is_validation(k, 0.1) for k in keys) / len(keys)
    assert 0.09 < share < 0.11
    assert [is_validation(k, 0.1) for k in keys[:50]] == [is_validation(k, 0.1) for k in keys[:50]]
    assert not any(is_validation(k, 0.0) for k in keys[:100])
    assert all(is_validation(k, 1.0) for k in keys[:100])


def test_text_folder_and_file(text_corpus):
    docs = list(iter_documents(str(text_corpus)))
    files = sorted(text_corpus.glob("*.txt"))
    assert [text for _, text in docs] == [p.read_text() for p in files]  # one file = one document, in order
    assert [key for key, _ in docs] == [str(i) for i in range(len(files))]
    assert list(iter_documents(str(files[3]))) == [("0", files[3].read_text())]
    assert len(list(iter_documents(str(text_corpus), max_documents=5))) == 5


def test_jsonl_and_parquet(tmp_path):
    rows = [{"content": f"row {i}", "other": i} for i in range(5)]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pq.write_table(pa.table({"content": [f"pq {i}" for i in range(3)]}), tmp_path / "b.parquet")
    jsonl = [t for _, t in iter_documents(str(tmp_path / "a.jsonl"), text_field="content")]
    assert jsonl == [f"row {i}" for i in range(5)]
    assert [t for _, t in iter_documents(str(tmp_path / "b.parquet"), text_field="content")] == ["pq 0", "pq 1", "pq 2"]
    folder = [t for _, t in iter_documents(str(tmp_path), text_field="content")]
    assert folder == jsonl + ["pq 0", "pq 1", "pq 2"]
    with pytest.raises(ValueError, match=r"data.text_field='text'.*content"):
        list(iter_documents(str(tmp_path / "a.jsonl")))


def test_hub_code_path_with_local_dataset(tmp_path):
    """The hub loader (load_dataset(name, config, split, streaming=True)) on a local dataset folder."""
    ds = tmp_path / "my_dataset"
    (ds / "data").mkdir(parents=True)
    (ds / "data" / "train.jsonl").write_text("\n".join(json.dumps({"text": f"train {i}"}) for i in range(4)))
    (ds / "data" / "test.jsonl").write_text(json.dumps({"text": "held out"}))
    assert [t for _, t in hub_documents(str(ds))] == [f"train {i}" for i in range(4)]
    assert [t for _, t in hub_documents(f"{ds}@test")] == ["held out"]
    assert parse_hub_spec("org/name:config@validation") == ("org/name", "config", "validation")
    assert parse_hub_spec("name") == ("name", None, "train")


def test_unknown_hub_dataset_error():
    with pytest.raises(ValueError, match=r"data.source='nobody/no_such_dataset'.*hub dataset.*Fix"):
        next(iter_documents("nobody/no_such_dataset"))


@pytest.mark.parametrize("spec", ["./missing.txt", "/no/such/folder", "data/missing.jsonl"])
def test_missing_path_error(spec):
    with pytest.raises(ValueError, match=rf"data.source='{spec}': no such file or folder.*Fix"):
        next(iter_documents(spec))


def test_unsupported_files_error(tmp_path):
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match=r"unsupported file type '.csv'"):
        next(iter_documents(str(tmp_path / "x.csv")))
    with pytest.raises(ValueError, match=r"the folder has no files"):
        next(iter_documents(str(tmp_path)))


# -- cache ---------------------------------------------------------------------------------------------------------


def _count_encodes(monkeypatch):
    calls = []
    original = Tokenizer.encode_batch
    monkeypatch.setattr(Tokenizer, "encode_batch", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    return calls


def test_cache_contents_and_reuse(tmp_path, text_corpus, tok, monkeypatch):
    calls = _count_encodes(monkeypatch)
    path = build_cache(str(text_corpus), tok, tmp_path, val_fraction=0.2)
    meta, tokens = load_cache(path)
    assert calls and tokens["train"].dtype == np.uint16 and isinstance(tokens["train"], np.memmap)

    # Exactly the packed documents, each routed by its key.
    docs = list(iter_documents(str(text_corpus)))
    for split, want_val in [("train", False), ("val", True)]:
        texts = [t for k, t in docs if is_validation(k, 0.2) == want_val]
        expected = pack_documents([tok.encode(t, bos=False) for t in texts], tok.bos_id, tok.eos_id)
        assert tokens[split].tolist() == expected.tolist()
        s = meta["splits"][split]
        assert (s["n_tokens"], s["n_documents"], s["bytes"]) == (len(expected), len(texts), sum(map(len, texts)))
    assert meta["splits"]["val"]["n_documents"] > 0
    assert meta["tokenizer"] == {"path": str(tok.path), "fingerprint": tok.fingerprint}

    mtime, n_calls = (path / "train.bin").stat().st_mtime_ns, len(calls)
    assert build_cache(str(text_corpus), tok, tmp_path, val_fraction=0.2) == path
    assert len(calls) == n_calls and (path / "train.bin").stat().st_mtime_ns == mtime
    # Other settings get another cache.
    assert build_cache(str(text_corpus), tok, tmp_path, val_fraction=0.3) != path


def test_cache_max_tokens_and_documents(tmp_path, text_corpus, tok):
    meta, _ = load_cache(build_cache(str(text_corpus), tok, tmp_path, val_fraction=0, max_tokens=250))
    n_docs, n_tokens = meta["splits"]["train"]["n_documents"], meta["splits"]["train"]["n_tokens"]
    assert 1 < n_docs < 40 and 250 <= n_tokens < 250 * n_docs / (n_docs - 1)  # stops after the doc that hits 250
    meta, _ = load_cache(build_cache(str(text_corpus), tok, tmp_path, val_fraction=0, max_documents=3))
    assert meta["splits"]["train"]["n_documents"] == 3


def test_interrupted_build_leaves_no_cache(tmp_path, text_corpus, tok, monkeypatch):
    tmp_path = tmp_path / "cache"
    monkeypatch.setattr(cache_module, "_BATCH_BYTES", 1000)  # several batches
    original = Tokenizer.encode_batch
    calls = []

    def fail_on_second_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Tokenizer, "encode_batch", fail_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        build_cache(str(text_corpus), tok, tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither a final folder nor a temporary one

    # A temporary folder left by a killed run is ignored.
    (tmp_path / ".tmp-leftover").mkdir()
    (tmp_path / ".tmp-leftover" / "train.bin").write_bytes(b"\0\0")
    path = build_cache(str(text_corpus), tok, tmp_path, val_fraction=0.2)
    assert load_cache(path)[0]["splits"]["train"]["n_documents"] > 0


def test_concurrent_builds_end_with_one_cache(tmp_path, text_corpus, tok, monkeypatch):
    """Two processes building the same cache at once: both finish, one copy stays, no temp folder is left."""
    barrier = threading.Barrier(2, timeout=30)
    original = cache_module._write_splits

    def both_in_flight(*args, **kwargs):
        stats = original(*args, **kwargs)
        barrier.wait()  # both have written their temp folder before either renames it
        return stats

    monkeypatch.setattr(cache_module, "_write_splits", both_in_flight)
    tmp_path = tmp_path / "cache"
    results = []
    threads = [threading.Thread(target=lambda: results.append(build_cache(str(text_corpus), tok, tmp_path)))]
    threads.append(threading.Thread(target=threads[0]._target))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1]
    assert [p.name for p in tmp_path.iterdir()] == [results[0].name]
    assert load_cache(results[0])[0]["splits"]["train"]["n_documents"] > 0
