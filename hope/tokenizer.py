"""A thin wrapper around a sentencepiece model: ``encode``/``decode`` plus the ids and checks the rest of hope needs.

Any sentencepiece ``.model`` file works: the committed default (``hope/assets/default_tokenizer.model``, BPE,
8192 pieces, trained by ``tokenizer/train_tokenizer.py``) or, for example, a Llama ``tokenizer.model``.
"""

import hashlib
from pathlib import Path

import sentencepiece as spm

DEFAULT_TOKENIZER = Path(__file__).parent / "assets" / "default_tokenizer.model"


class Tokenizer:
    """A sentencepiece tokenizer.

    Args:
        path: the ``.model`` file.

    Attributes:
        path: the ``.model`` file.
        fingerprint: sha256 (hex) of the model file's bytes, for cache keys.
        processor: the underlying ``sentencepiece.SentencePieceProcessor``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(
                f"tokenizer model not found: {self.path}. Fix: give the path of a sentencepiece .model file "
                f"(tokenizer/train_tokenizer.py makes one), or none for the default tokenizer."
            )
        data = self.path.read_bytes()
        self.processor = spm.SentencePieceProcessor()
        try:
            self.processor.LoadFromSerializedProto(data)
        except (RuntimeError, OSError) as e:
            raise ValueError(f"{self.path} is not a sentencepiece model ({e})") from e
        # Identifies the tokenizer in cache keys whatever its path: a copied model reuses caches, an edited one not.
        self.fingerprint = hashlib.sha256(data).hexdigest()

    @classmethod
    def default(cls) -> "Tokenizer":
        """The committed default tokenizer (``DEFAULT_TOKENIZER``)."""
        return cls(DEFAULT_TOKENIZER)

    @property
    def vocab_size(self) -> int:
        """Number of pieces in the sentencepiece model (ids 0 .. vocab_size - 1)."""
        return self.processor.vocab_size()

    # sentencepiece reports a disabled special token as -1; None makes forgetting to check it fail loudly.
    @property
    def bos_id(self) -> int | None:
        """Id of the beginning-of-sequence token, or None if the model has none."""
        return _id_or_none(self.processor.bos_id())

    @property
    def eos_id(self) -> int | None:
        """Id of the end-of-sequence token, or None if the model has none."""
        return _id_or_none(self.processor.eos_id())

    @property
    def pad_id(self) -> int | None:
        """Id of the padding token, or None if the model has none."""
        return _id_or_none(self.processor.pad_id())

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """Token ids of ``text``, with BOS prepended and EOS appended if asked (and the model has them)."""
        return self.processor.encode(text, add_bos=bos, add_eos=eos)

    def encode_batch(
        self, texts: list[str], bos: bool = True, eos: bool = False, num_threads: int = -1
    ) -> list[list[int]]:
        """``encode`` for many texts at once, on ``num_threads`` threads in C++ (-1: all cores)."""
        return self.processor.encode(list(texts), add_bos=bos, add_eos=eos, num_threads=num_threads)

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``. Special ids (BOS, EOS, pad, ...) and ids beyond the vocabulary are dropped.

        Ids beyond the vocabulary can come from a model whose embedding is padded past ``vocab_size``.
        """
        n, sp = self.vocab_size, self.processor
        return sp.decode([i for i in map(int, ids) if 0 <= i < n and not sp.is_control(i)])

    def check_fits(self, model_vocab_size: int) -> None:
        """Raise ``ValueError`` if token ids can reach past the model's embedding table."""
        if self.vocab_size > model_vocab_size:
            raise ValueError(
                f"tokenizer {self.path} has {self.vocab_size} tokens but the model's vocab_size is "
                f"{model_vocab_size}. Fix: set model vocab_size >= {self.vocab_size} (e.g. rounded up to a "
                f"multiple of 64), or use a tokenizer trained with --vocab_size <= {model_vocab_size}."
            )

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


def _id_or_none(i: int) -> int | None:
    return None if i < 0 else i
