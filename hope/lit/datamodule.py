"""``TextDataModule``: tokenized, packed, cached text for causal language modelling, with resumable sampling.

Training draws blocks of ``seq_len + 1`` tokens without end: epoch ``e`` is a permutation of the blocks seeded
with ``seed + e``, dealt round-robin to the ranks. The data position is the number of micro-batches this rank
has consumed (``consumed_batches``), advanced by ``DataPositionCallback`` and saved in checkpoints through
``state_dict``, so a resumed run continues with exactly the batch that would have come next.

The train DataLoader has no length: bound training with ``max_steps`` and run validation every
``val_check_interval`` steps (an int).

With ``episodes`` set, the blocks are in-context continual-learning episodes (``hope.data.episodes``) instead of
text: generated on demand, padded to ``seq_len``, labelled only at query answers; the sampler and the data
position work the same way.
"""

import dataclasses
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from hope.data.cache import build_cache, load_cache
from hope.data.episodes import EpisodeConfig, EpisodeGenerator, EpisodeSet
from hope.data.packing import PackedBlocks, collate_blocks, num_blocks
from hope.data.sampler import InfiniteBlockSampler
from hope.data.sources import source_kind
from hope.tokenizer import Tokenizer


class TextDataModule(L.LightningDataModule):
    """Text from a file, folder, hub dataset or the built-in default corpus, as packed token blocks.

    Args:
        source: ``"default"`` (the Python standard library's source, always available offline), a text/jsonl/
            parquet file or folder, or a hub dataset ``name[:config][@split]``. See ``hope.data.sources``.
        val_source: a separate validation source; ``None`` holds out ``val_fraction`` of ``source`` instead.
        tokenizer: path of a sentencepiece ``.model``; ``None`` uses the committed default tokenizer.
        seq_len: tokens per training sequence.
        batch_size: sequences per micro-batch and rank.
        val_batch_size: sequences per validation batch (``None``: ``batch_size``).
        val_fraction: share of ``source`` documents held out for validation (0: no validation).
        max_val_blocks: validate on at most the first this many blocks of the validation split (``None``: all).
        num_workers: DataLoader worker processes (0 loads in the main process; blocks are cheap memmap slices).
        seed: seed of the training order; epoch ``e`` uses ``seed + e``.
        cache_dir: where tokenized data is cached (``None``: ``$HOPE_CACHE`` or ``~/.cache/hope``).
        text_field: column holding the text in json/jsonl/parquet files and hub datasets.
        max_documents: read at most this many documents per source (bounds streaming hub datasets).
        max_tokens: stop reading a source after this many tokens (bounds streaming hub datasets).
        shuffle: shuffle the training blocks each epoch (``False``: in order, useful for debugging).
        encoding: codec of local text/JSON files, e.g. ``latin-1`` or ``utf-16-le`` (``None``: UTF-8, or what a
            byte-order mark says; a file that is neither is an error naming it, see ``hope.data.encoding``).
        episodes: train and validate on in-context continual-learning episodes (``hope.data.episodes``, e.g.
            ``--data.episodes.n_tasks 3 --data.episodes.objective acl``) instead of text; ``source`` is not read.
    """

    def __init__(
        self,
        source: str = "default",
        val_source: str | None = None,
        tokenizer: str | None = None,
        seq_len: int = 256,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        val_fraction: float = 0.01,
        max_val_blocks: int | None = None,
        num_workers: int = 0,
        seed: int = 1234,
        cache_dir: str | None = None,
        text_field: str = "text",
        max_documents: int | None = None,
        max_tokens: int | None = None,
        shuffle: bool = True,
        encoding: str | None = None,
        episodes: EpisodeConfig | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["episodes"])
        self.episodes = episodes
        if episodes is not None:  # plain types in checkpoints (LightningCLI reads them with weights_only=True)
            self.hparams["episodes"] = dataclasses.asdict(episodes)
        for name, value, minimum in [
            ("seq_len", seq_len, 1),
            ("batch_size", batch_size, 1),
            ("val_batch_size", val_batch_size, 1),
            ("max_val_blocks", max_val_blocks, 1),
            ("num_workers", num_workers, 0),
            ("max_documents", max_documents, 1),
            ("max_tokens", max_tokens, 1),
        ]:
            if value is not None and value < minimum:
                raise ValueError(f"data.{name}={value} must be >= {minimum}. Fix: set it to {minimum} or more.")
        if not 0 <= val_fraction < 1:
            raise ValueError(
                f"data.val_fraction={val_fraction} must be in [0, 1). Fix: use e.g. 0.01, "
                f"or data.val_source for a separate validation set."
            )
        # Fail at construction, not after minutes of training setup, when a local path is wrong.
        source_kind(source, "data.source")
        if val_source is not None:
            source_kind(val_source, "data.val_source")

        self.source, self.val_source = source, val_source
        self.seq_len, self.batch_size = seq_len, batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.val_fraction, self.max_val_blocks = val_fraction, max_val_blocks
        self.num_workers, self.seed, self.shuffle = num_workers, seed, shuffle
        self.cache_dir, self.text_field = cache_dir, text_field
        self.max_documents, self.max_tokens, self.encoding = max_documents, max_tokens, encoding
        self.tokenizer = Tokenizer(tokenizer) if tokenizer is not None else Tokenizer.default()
        # Share of `source` held out: none when validation comes from its own source.
        self.holdout_fraction = 0.0 if val_source is not None else val_fraction
        self.consumed_batches = 0
        self.train_blocks: PackedBlocks | None = None
        self.val_blocks: PackedBlocks | None = None

    @property
    def vocab_size(self) -> int:
        """Number of token ids of the data module's tokenizer."""
        return self.tokenizer.vocab_size

    @property
    def num_train_tokens(self) -> int:
        """Tokens in the training split (after ``setup``)."""
        if self.train_blocks is None:
            raise RuntimeError("num_train_tokens is known after setup(); call datamodule.setup('fit') first")
        return len(self.train_blocks.tokens)

    # -- building and loading ------------------------------------------------------------------------------------

    def _caches(self) -> dict[str, tuple[str, str, float]]:
        """``{split: (source, field, holdout fraction)}``: which cached source each split comes from."""
        train = (self.source, "data.source", self.holdout_fraction)
        val = train if self.val_source is None else (self.val_source, "data.val_source", 1.0)
        return {"train": train, "val": val}

    def _build(self, source: str, field: str, fraction: float) -> Path:
        return build_cache(
            source,
            self.tokenizer,
            self.cache_dir,
            val_fraction=fraction,
            text_field=self.text_field,
            max_documents=self.max_documents,
            max_tokens=self.max_tokens,
            field=field,
            encoding=self.encoding,
        )

    def prepare_data(self) -> None:
        """Tokenize and cache the sources (Lightning runs this on one process per node)."""
        if self.episodes is not None:
            return  # generated on demand
        for source, field, fraction in set(self._caches().values()):
            self._build(source, field, fraction)

    def setup(self, stage: str | None = None) -> None:
        """Memory-map the cached splits (building them if ``prepare_data`` did not run) and check their size."""
        if self.train_blocks is not None:
            return
        if self.episodes is not None:
            generator = EpisodeGenerator(self.episodes, self.tokenizer)
            self.train_blocks = EpisodeSet(generator, "train", self.episodes.n_train, self.seq_len)
            self.val_blocks = EpisodeSet(generator, "val", self.episodes.n_val, self.seq_len)
            self.train_blocks.check_lengths()
            return
        splits = {}
        for split, (source, field, fraction) in self._caches().items():
            meta, tokens = load_cache(self._build(source, field, fraction))
            splits[split] = tokens[split]
            self._check_split(split, tokens[split], meta, source, field)
        self.train_blocks = PackedBlocks(splits["train"], self.seq_len)
        if self.val_source is not None or self.val_fraction > 0:
            self.val_blocks = PackedBlocks(splits["val"], self.seq_len)

    def _check_split(self, split: str, tokens: np.ndarray, meta: dict, source: str, field: str) -> None:
        n, docs = len(tokens), meta["splits"]["train"]["n_documents"] + meta["splits"]["val"]["n_documents"]
        if docs == 0:
            raise ValueError(f"{field}={source!r} has no documents. Fix: point {field} at non-empty data.")
        if n == 0 and split == "val" and self.val_fraction == 0 and self.val_source is None:
            return  # no validation wanted
        if n == 0 and field == "data.source":
            raise ValueError(
                f"the {split} split is empty: data.val_fraction={self.val_fraction} put "
                f"{'none' if split == 'val' else 'all'} of the {docs} documents of data.source={source!r} in "
                f"validation. Fix: give data.val_source, change data.val_fraction (0: train without validation), "
                f"or use more documents."
            )
        if num_blocks(n, self.seq_len) == 0:
            fits = f"data.seq_len <= {n - 1} would fit" if n > 1 else "no seq_len fits"
            raise ValueError(
                f"the {split} split of {field}={source!r} has {n} tokens, fewer than one block of "
                f"data.seq_len + 1 = {self.seq_len + 1} tokens. Fix: {fits}, or use more data."
            )

    # -- loaders -------------------------------------------------------------------------------------------------

    def _dist(self) -> tuple[int, int]:
        """``(world_size, rank)`` from the attached trainer, ``(1, 0)`` without one."""
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_dataloader(self) -> DataLoader:
        """Endless, rank-sharded batches starting at ``consumed_batches``."""
        self.setup("fit")
        world_size, rank = self._dist()
        sampler = InfiniteBlockSampler(
            len(self.train_blocks),
            seed=self.seed,
            shuffle=self.shuffle,
            rank=rank,
            world_size=world_size,
            start=self.consumed_batches * self.batch_size,
        )
        return self._loader(self.train_blocks, self.batch_size, sampler)

    def val_dataloader(self) -> DataLoader | list:
        """The first ``max_val_blocks`` validation blocks in order, split evenly over the ranks."""
        self.setup("validate")
        if self.val_blocks is None:
            return []  # data.val_fraction=0 and no val_source: no validation
        world_size, rank = self._dist()
        n = len(self.val_blocks) if self.max_val_blocks is None else min(self.max_val_blocks, len(self.val_blocks))
        if n < world_size:
            raise ValueError(
                f"only {n} validation blocks for {world_size} ranks. Fix: raise data.max_val_blocks or "
                f"data.val_fraction, or lower data.seq_len."
            )
        # A DistributedSampler (even with one rank) also stops Lightning from adding its own; drop_last trims the
        # tail so every rank sees the same number of blocks and none is counted twice.
        blocks = Subset(self.val_blocks, range(n))
        sampler = DistributedSampler(blocks, num_replicas=world_size, rank=rank, shuffle=False, drop_last=True)
        return self._loader(blocks, self.val_batch_size, sampler)

    def _loader(self, dataset, batch_size: int, sampler) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate_blocks if self.episodes is None else None,  # episodes come labelled
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    # -- data position -------------------------------------------------------------------------------------------

    def advance(self, n: int = 1) -> None:
        """Record that this rank consumed ``n`` more training micro-batches (``DataPositionCallback`` calls it)."""
        self.consumed_batches += n

    def _settings(self) -> dict[str, Any]:
        """What the meaning of a data position depends on."""
        settings = {
            "source": self.source,
            "holdout_fraction": self.holdout_fraction,
            "text_field": self.text_field,
            "max_documents": self.max_documents,
            "max_tokens": self.max_tokens,
            "encoding": self.encoding,
            "tokenizer": self.tokenizer.fingerprint,
            "seq_len": self.seq_len,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "batch_size": self.batch_size,
            "world_size": self._dist()[0],
        }
        if self.episodes is not None:
            settings["episodes"] = dataclasses.asdict(self.episodes)
        elif self.train_blocks is not None:
            settings["train_tokens"] = self.num_train_tokens
        return settings

    def state_dict(self) -> dict[str, Any]:
        """The data position (micro-batches consumed by this rank) and the settings it depends on, for checkpoints."""
        return {"consumed_batches": self.consumed_batches, **self._settings()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the data position; refuse if the settings it depends on changed since it was saved. Only
        training has a data position: ``validate``/``test`` may use any data settings."""
        stage = getattr(getattr(getattr(self, "trainer", None), "state", None), "fn", None)
        if stage is not None and stage != "fit":
            return
        now = self._settings()
        changed = [f"{k}: {state_dict[k]!r} -> {v!r}" for k, v in now.items() if k in state_dict and state_dict[k] != v]
        if changed:
            raise ValueError(
                f"cannot resume the data position ({state_dict['consumed_batches']} micro-batches per rank): "
                f"data settings changed since the checkpoint: {'; '.join(changed)}. The same position would now "
                f"mean other data. Fix: resume with the original data settings (and number of devices), or load "
                f"only the weights (--init_from-style) to start a fresh data position."
            )
        self.consumed_batches = state_dict["consumed_batches"]


class DataPositionCallback(L.Callback):
    """Advances ``trainer.datamodule``'s data position after every training micro-batch.

    Lightning runs ``ModelCheckpoint`` after other callbacks, so a checkpoint saved at the end of batch N
    records N consumed batches. Does nothing for datamodules without ``advance()``.
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        """Call the data module's ``advance()`` once per training micro-batch, if it has one."""
        advance = getattr(trainer.datamodule, "advance", None)
        if advance is not None:
            advance()
