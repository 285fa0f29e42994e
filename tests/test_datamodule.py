"""Tests of TextDataModule (hope.lit.datamodule) and the training sampler (hope.data.sampler)."""

import json
import time
from types import SimpleNamespace

import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from hope.data.cache import build_cache, load_cache
from hope.data.sampler import InfiniteBlockSampler
from hope.data.sources import default_corpus_files, is_validation
from hope.lit.datamodule import DataPositionCallback, TextDataModule
from hope.tokenizer import Tokenizer


def _dm(source, tmp_path, **kwargs) -> TextDataModule:
    """A data module over a tiny corpus with a private cache; small blocks so there are many of them."""
    kwargs = {"seq_len": 16, "batch_size": 4, "val_fraction": 0.1, "cache_dir": str(tmp_path / "cache"), **kwargs}
    return TextDataModule(str(source), **kwargs)


def _batches(dm, n, loader=None):
    it = iter(loader if loader is not None else dm.train_dataloader())
    return [next(it) for _ in range(n)]


def _on_rank(dm, rank, world_size):
    dm.trainer = SimpleNamespace(world_size=world_size, global_rank=rank)
    return dm


# -- data module ---------------------------------------------------------------------------------------------------


def test_batches_are_shifted_blocks(tmp_path, text_corpus):
    dm = _dm(text_corpus, tmp_path, shuffle=False)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.vocab_size == 8192 and dm.num_train_tokens == len(dm.train_blocks.tokens)
    batch = _batches(dm, 1)[0]
    assert set(batch) == {"input_ids", "labels"}
    assert batch["input_ids"].shape == batch["labels"].shape == (4, 16) and batch["input_ids"].dtype == torch.int64
    tokens = torch.from_numpy(dm.train_blocks.tokens[: 4 * 16 + 1].astype(np.int64))
    assert batch["input_ids"].flatten().tolist() == tokens[:-1].tolist()  # shuffle=False: blocks 0..3 in order
    assert batch["labels"].flatten().tolist() == tokens[1:].tolist()


def test_training_order_is_deterministic(tmp_path, text_corpus):
    a = _batches(_dm(text_corpus, tmp_path), 5)
    b = _batches(_dm(text_corpus, tmp_path), 5)
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b, strict=True))
    c = _batches(_dm(text_corpus, tmp_path, seed=7), 5)
    assert not all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, c, strict=True))


def test_sampler_epochs_and_start():
    sampler = InfiniteBlockSampler(10, seed=3)
    it = iter(sampler)
    first, second = [next(it) for _ in range(10)], [next(it) for _ in range(10)]
    assert sorted(first) == sorted(second) == list(range(10)) and first != second  # a new permutation per epoch
    assert first == torch.randperm(10, generator=torch.Generator().manual_seed(3)).tolist()
    resumed = iter(InfiniteBlockSampler(10, seed=3, start=7))  # crosses the epoch boundary
    assert [next(resumed) for _ in range(13)] == (first + second)[7:]
    it = iter(InfiniteBlockSampler(5, shuffle=False))
    assert [next(it) for _ in range(7)] == [0, 1, 2, 3, 4, 0, 1]
    with pytest.raises(TypeError):
        len(sampler)


def test_sampler_rank_sharding():
    ranks = [InfiniteBlockSampler(11, seed=0, rank=r, world_size=2) for r in range(2)]
    epochs = [r.epoch_indices(0).tolist() for r in ranks]
    assert len(epochs[0]) == len(epochs[1]) == 5  # 11 blocks: one dropped so both ranks get 5
    assert not set(epochs[0]) & set(epochs[1])
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(0)).tolist()
    assert epochs[0] == perm[0:10:2] and epochs[1] == perm[1:10:2]


def test_datamodule_rank_sharding(tmp_path, text_corpus):
    indices = []
    for rank in range(2):
        dm = _on_rank(_dm(text_corpus, tmp_path, batch_size=1), rank, 2)
        loader = dm.train_dataloader()
        assert (loader.sampler.rank, loader.sampler.num_replicas) == (rank, 2)
        n = len(dm.train_blocks) // 2
        sampled = iter(loader.sampler)
        indices.append([next(sampled) for _ in range(n)])
        for i, batch in zip(indices[-1], _batches(dm, n, loader), strict=True):
            assert torch.equal(batch["input_ids"][0], dm.train_blocks[i][:-1])
    assert len(indices[0]) == len(indices[1]) and not set(indices[0]) & set(indices[1])


def test_resume_continues_with_the_next_batch(tmp_path, text_corpus):
    k = 7  # past the end of the first epoch (24 blocks / 4 per batch = 6 batches)
    uninterrupted = _batches(_dm(text_corpus, tmp_path), k + 2)

    dm = _dm(text_corpus, tmp_path)
    loader = iter(dm.train_dataloader())
    for _ in range(k):
        next(loader)
        dm.advance()
    state = dm.state_dict()
    assert state["consumed_batches"] == k

    resumed = _dm(text_corpus, tmp_path)
    resumed.setup("fit")
    resumed.load_state_dict(state)
    batches = _batches(resumed, 2)
    assert torch.equal(batches[0]["input_ids"], uninterrupted[k]["input_ids"])
    assert torch.equal(batches[1]["labels"], uninterrupted[k + 1]["labels"])


@pytest.mark.parametrize(
    ("change", "message"),
    [({"seq_len": 8}, "seq_len: 16 -> 8"), ({"seed": 5}, "seed: 1234 -> 5"), ({"batch_size": 2}, "batch_size: 4 -> 2")],
)
def test_resume_refuses_changed_settings(tmp_path, text_corpus, change, message):
    state = _dm(text_corpus, tmp_path).state_dict()
    with pytest.raises(ValueError, match=rf"{message}.*--init_from"):
        _dm(text_corpus, tmp_path, **change).load_state_dict(state)


def test_resume_refuses_other_source_or_world_size(tmp_path, text_corpus):
    state = _dm(text_corpus, tmp_path).state_dict()
    other = tmp_path / "other.txt"
    other.write_text("x " * 500)
    with pytest.raises(ValueError, match=r"source: .*corpus.* -> .*other.txt"):
        _dm(other, tmp_path).load_state_dict(state)
    with pytest.raises(ValueError, match="world_size: 1 -> 2"):
        _on_rank(_dm(text_corpus, tmp_path), 0, 2).load_state_dict(state)


def test_validation_loader(tmp_path, text_corpus):
    dm = _dm(text_corpus, tmp_path, val_fraction=0.3, max_val_blocks=6, val_batch_size=2)
    batches = list(dm.val_dataloader())
    assert len(dm.val_blocks) > 6 and len(batches) == 3
    expected = torch.stack([dm.val_blocks[i] for i in range(6)])
    assert torch.equal(torch.cat([b["input_ids"] for b in batches]), expected[:, :-1])
    assert list(dm.val_dataloader())[0]["input_ids"].tolist() == batches[0]["input_ids"].tolist()

    shards = []
    for rank in range(2):
        dm = _on_rank(_dm(text_corpus, tmp_path, val_fraction=0.3, max_val_blocks=5, val_batch_size=1), rank, 2)
        shards.append([b["input_ids"][0].tolist() for b in dm.val_dataloader()])
    assert len(shards[0]) == len(shards[1]) == 2  # 5 blocks over 2 ranks: the 5th is dropped
    assert shards[0] == [expected[i, :-1].tolist() for i in (0, 2)]
    assert shards[1] == [expected[i, :-1].tolist() for i in (1, 3)]


def test_no_validation_when_val_fraction_is_zero(tmp_path, text_corpus):
    dm = _dm(text_corpus, tmp_path, val_fraction=0.0)
    assert dm.val_dataloader() == []
    _, tokens = load_cache(build_cache(str(text_corpus), dm.tokenizer, tmp_path / "cache", val_fraction=0.0))
    assert dm.num_train_tokens == tokens["train"].size and tokens["val"].size == 0


def test_separate_val_source(tmp_path, text_corpus):
    val_file = tmp_path / "val.jsonl"
    val_file.write_text("\n".join(json.dumps({"text": f"validation row {i} " * 5}) for i in range(6)))
    dm = _dm(text_corpus, tmp_path, val_source=str(val_file))
    dm.setup("fit")
    whole = _dm(text_corpus, tmp_path, val_fraction=0.0)
    whole.setup("fit")
    assert dm.num_train_tokens == whole.num_train_tokens  # nothing held out of the train source
    assert dm.tokenizer.decode(dm.val_blocks[0].tolist()).startswith("validation row 0")


def test_parquet_source_in_datamodule(tmp_path):
    table = pa.table({"body": [f"parquet document number {i}. " * 4 for i in range(30)]})
    pq.write_table(table, tmp_path / "d.parquet")
    dm = _dm(tmp_path / "d.parquet", tmp_path, text_field="body", val_fraction=0.2)
    batch = _batches(dm, 1)[0]
    assert "parquet document" in dm.tokenizer.decode(batch["input_ids"][0].tolist())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seq_len": 0}, r"data.seq_len=0 must be >= 1"),
        ({"batch_size": 0}, r"data.batch_size=0 must be >= 1"),
        ({"val_fraction": 1.0}, r"data.val_fraction=1.0 must be in \[0, 1\)"),
        ({"max_val_blocks": 0}, r"data.max_val_blocks=0"),
    ],
)
def test_argument_errors(tmp_path, text_corpus, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _dm(text_corpus, tmp_path, **kwargs)


def test_missing_source_errors_at_construction(tmp_path):
    with pytest.raises(ValueError, match=r"data.source='/nope/corpus.txt': no such file"):
        TextDataModule("/nope/corpus.txt")
    with pytest.raises(ValueError, match=r"data.val_source='./val.jsonl': no such file"):
        TextDataModule("default", val_source="./val.jsonl")


def test_split_shorter_than_a_block_error(tmp_path):
    (tmp_path / "short.txt").write_text("just a few words")
    n = len(Tokenizer.default().encode("just a few words", eos=True))
    dm = _dm(tmp_path / "short.txt", tmp_path, seq_len=64, val_fraction=0.0)
    with pytest.raises(ValueError, match=rf"train split .* has {n} tokens.*data.seq_len <= {n - 1} would fit"):
        dm.setup("fit")


def test_empty_splits_errors(tmp_path, text_corpus):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"has no documents"):
        _dm(tmp_path / "empty.jsonl", tmp_path).setup("fit")
    one = sorted(text_corpus.glob("*.txt"))[0]  # a single document, key "0", which hashes to 0.37
    assert is_validation("0", 0.5) and not is_validation("0", 0.2)
    with pytest.raises(ValueError, match=r"the val split is empty.*put none of the 1 documents.*data.val_source"):
        _dm(one, tmp_path, val_fraction=0.2).setup("fit")
    with pytest.raises(ValueError, match=r"the train split is empty.*put all of the 1 documents.*data.val_source"):
        _dm(one, tmp_path, val_fraction=0.5).setup("fit")


def test_default_corpus_through_datamodule(tmp_path):
    """The default corpus, tokenizing only up to its first validation file to stay fast."""
    rels = [rel for rel, _ in default_corpus_files()]
    first_val = next(i for i, rel in enumerate(rels) if is_validation(rel, 0.01))
    dm = TextDataModule(max_documents=first_val + 1, cache_dir=str(tmp_path), seq_len=32, max_val_blocks=4)
    dm.setup("fit")
    assert dm.num_train_tokens > 1000 and len(dm.val_blocks) >= 1
    assert _batches(dm, 1)[0]["input_ids"].shape == (8, 32)


@pytest.mark.slow
def test_full_default_corpus(tmp_path):
    t0 = time.perf_counter()
    dm = TextDataModule(cache_dir=str(tmp_path))
    dm.prepare_data()
    build_s = time.perf_counter() - t0
    dm.setup("fit")
    assert dm.num_train_tokens > 5_000_000 and len(dm.val_blocks) > 10
    t0 = time.perf_counter()
    again = TextDataModule(cache_dir=str(tmp_path))
    again.prepare_data()
    again.setup("fit")
    reload_s = time.perf_counter() - t0
    assert reload_s < min(5.0, build_s)  # the cache is reused, not rebuilt
    assert torch.equal(_batches(dm, 1)[0]["input_ids"], _batches(again, 1)[0]["input_ids"])


# -- with a real Trainer -------------------------------------------------------------------------------------------


class _Recorder(L.LightningModule):
    """A tiny language model that records the first token of every batch it trains on."""

    def __init__(self, vocab_size: int = 8192) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab_size, 4)
        self.head = torch.nn.Linear(4, vocab_size)
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["input_ids"][:, 0].tolist())
        logits = self.head(self.emb(batch["input_ids"]))
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten())

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(dm, max_steps, root, ckpt_path=None, checkpoint=None):
    model = _Recorder()
    callbacks = [DataPositionCallback()] + ([checkpoint] if checkpoint else [])
    trainer = L.Trainer(
        max_steps=max_steps,
        default_root_dir=root,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        val_check_interval=3,
        num_sanity_val_steps=0,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model.seen


def test_trainer_resume_from_checkpoint(tmp_path, text_corpus):
    """Lightning restores the data position before it builds the train loader, and the callback keeps it."""
    full = _fit(_dm(text_corpus, tmp_path), 8, tmp_path / "a")
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1)
    first = _fit(_dm(text_corpus, tmp_path), 5, tmp_path / "b", checkpoint=ckpt)
    assert first == full[:5]
    path = tmp_path / "ckpt" / "epoch=0-step=5.ckpt"
    assert torch.load(path, weights_only=True)["TextDataModule"]["consumed_batches"] == 5  # plain types only
    resumed = _fit(_dm(text_corpus, tmp_path), 8, tmp_path / "c", ckpt_path=path)
    assert resumed == full[5:]
