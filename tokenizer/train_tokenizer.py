"""Train a sentencepiece BPE tokenizer on any hope data source.

Sources are the same spec strings as ``data.source`` (see ``hope/data/sources.py``): ``default`` (the built-in
corpus), text/jsonl/parquet files or folders, or a hub dataset name. The committed default tokenizer was made
with::

    python tokenizer/train_tokenizer.py default --vocab_size 8192 --output hope/assets/default_tokenizer.model

Other examples::

    python tokenizer/train_tokenizer.py data/books/ --vocab_size 32000 --output my.model --max_sentences 2000000
    python tokenizer/train_tokenizer.py data/corpus.jsonl --text_field content --output my.model
"""

import argparse
import io
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm

from hope.data.sources import is_validation, iter_documents

log = logging.getLogger("train_tokenizer")

# LLM-style BPE settings (as Llama's). Identity normalization and kept whitespace make decode(encode(x)) == x,
# which code needs (indentation) and which keeps token counts honest for bits-per-byte.
SPM_OPTIONS = dict(
    model_type="bpe",
    byte_fallback=True,  # unseen characters become <0xNN> byte pieces instead of <unk>
    split_digits=True,
    unk_id=0,
    bos_id=1,
    eos_id=2,
    pad_id=3,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    allow_whitespace_only_pieces=True,  # runs of indentation become single pieces
    # Training sentences are chunks of lines cut at arbitrary places, and documents are encoded whole, so a
    # dummy "▁" at the start of each chunk would teach pieces that never occur at encode time.
    add_dummy_prefix=False,
    shuffle_input_sentence=True,
)


def sentences(texts: Iterable[str], chunk_chars: int = 1024) -> Iterator[str]:
    """Cut documents into training "sentences" of whole lines, about ``chunk_chars`` characters each.

    Newlines stay inside the chunks so BPE can learn pieces such as ``"):\\n"``; empty chunks are skipped.
    """
    for text in texts:
        lines = text.splitlines(keepends=True)
        start = size = 0
        for end, line in enumerate(lines, 1):
            size += len(line)
            if size >= chunk_chars or end == len(lines):
                chunk = "".join(lines[start:end])
                if chunk.strip():
                    yield chunk
                start, size = end, 0


def train_tokenizer(
    sources: list[str],
    output: str | Path,
    vocab_size: int = 8192,
    max_sentences: int = 0,
    num_threads: int | None = None,
    character_coverage: float = 0.9995,
    text_field: str = "text",
    max_documents: int | None = None,
    val_fraction: float = 0.01,
    seed: int = 1234,
    **spm_overrides,
) -> Path:
    """Train a BPE model on ``sources`` and write it to ``output`` (returns the path).

    ``val_fraction`` skips the documents that ``TextDataModule`` holds out for validation with the same
    fraction, so the tokenizer never sees validation text. ``spm_overrides`` go to sentencepiece as they are
    (e.g. ``hard_vocab_limit=False`` for tiny corpora in tests).
    """

    def texts() -> Iterator[str]:
        for spec in sources:
            for key, text in iter_documents(spec, text_field=text_field, max_documents=max_documents):
                if not is_validation(key, val_fraction):
                    yield text

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(seed)  # sentence sampling is random; make the model reproducible
    model = io.BytesIO()
    options = {
        **SPM_OPTIONS,
        "vocab_size": vocab_size,
        "input_sentence_size": max_sentences,
        "num_threads": num_threads or os.cpu_count() or 1,
        "character_coverage": character_coverage,
        "max_sentence_length": 16384,  # bytes; longer sentences (a single huge line) are skipped
        "minloglevel": 1,
        **spm_overrides,
    }
    spm.SentencePieceTrainer.train(sentence_iterator=sentences(texts()), model_writer=model, **options)
    # Write atomically so an interrupted run never leaves a truncated model behind.
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_bytes(model.getvalue())
    os.replace(tmp, output)
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", default=["default"], help="data source specs (default: 'default')")
    parser.add_argument("--output", required=True, help="where to write the .model file")
    parser.add_argument("--vocab_size", type=int, default=8192)
    parser.add_argument(
        "--max_sentences",
        "--input_sentence_size",
        type=int,
        default=0,
        help="sample at most this many training sentences (chunks of ~1 KB); 0 = use all",
    )
    parser.add_argument("--num_threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--character_coverage", type=float, default=0.9995, help="< 1.0 so byte pieces train")
    parser.add_argument("--text_field", default="text", help="text column of jsonl/parquet/hub data")
    parser.add_argument("--max_documents", type=int, default=None, help="read at most this many documents")
    parser.add_argument("--val_fraction", type=float, default=0.01, help="skip the data module's validation docs")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    path = train_tokenizer(
        args.sources,
        args.output,
        vocab_size=args.vocab_size,
        max_sentences=args.max_sentences,
        num_threads=args.num_threads,
        character_coverage=args.character_coverage,
        text_field=args.text_field,
        max_documents=args.max_documents,
        val_fraction=args.val_fraction,
        seed=args.seed,
    )
    log.info(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB) in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
