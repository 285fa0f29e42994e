"""Data: sources of documents, tokenized caches, packing into blocks, and the Lightning data module."""

from hope.data.cache import build_cache, default_cache_dir, load_cache
from hope.data.datamodule import DataPositionCallback, InfiniteBlockSampler, TextDataModule
from hope.data.packing import PackedBlocks, collate_blocks, pack_documents
from hope.data.sources import default_corpus_files, is_validation, iter_documents

__all__ = [
    "DataPositionCallback",
    "InfiniteBlockSampler",
    "PackedBlocks",
    "TextDataModule",
    "build_cache",
    "collate_blocks",
    "default_cache_dir",
    "default_corpus_files",
    "is_validation",
    "iter_documents",
    "load_cache",
    "pack_documents",
]
