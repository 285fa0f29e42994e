"""Tests of hope.tokenizer and tokenizer/train_tokenizer.py."""

import hashlib
import importlib.util
from pathlib import Path

import pytest

from hope.tokenizer import DEFAULT_TOKENIZER, Tokenizer

ROOT = Path(__file__).resolve().parents[1]


def _load_train_script():
    spec = importlib.util.spec_from_file_location("train_tokenizer", ROOT / "tokenizer" / "train_tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_script = _load_train_script()


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.default()


def _tiny_model(folder: Path, out: Path, **overrides) -> Path:
    """A throwaway tokenizer: 40 short documents can't fill a real vocab, so the size is a soft limit."""
    return train_script.train_tokenizer(
        [str(folder)], out, vocab_size=320, val_fraction=0.0, hard_vocab_limit=False, num_threads=1, **overrides
    )


def test_default_tokenizer_properties(tok):
    assert tok.path == DEFAULT_TOKENIZER
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (8192, 1, 2, 3)
    assert tok.processor.unk_id() == 0
    assert tok.fingerprint == hashlib.sha256(DEFAULT_TOKENIZER.read_bytes()).hexdigest()
    assert tok.processor.id_to_piece(4) == "<0x00>"  # byte-fallback pieces follow the 4 specials
    assert "Tokenizer(" in repr(tok)


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world! The year is 2024.",
        "def f(x):\n    return x  # two  spaces\n\n\ttab\r\n",
        "  leading and trailing spaces  ",
        "héllo wörld, 日本語, Ελληνικά, emoji 🙂🚀, combining e\u0301, NBSP\u00a0, zero-width\u200b.",
        "",
    ],
)
def test_round_trip(tok, text):
    ids = tok.encode(text, bos=False)
    assert tok.decode(ids) == text
    assert tok.processor.unk_id() not in ids  # byte fallback: nothing is unknown


def test_byte_fallback_pieces(tok):
    pieces = [tok.processor.id_to_piece(i) for i in tok.encode("🙂", bos=False)]
    assert pieces[-4:] == ["<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]


def test_digits_are_split(tok):
    pieces = [tok.processor.id_to_piece(i) for i in tok.encode("x = 12345", bos=False)]
    assert pieces[-5:] == ["1", "2", "3", "4", "5"]


def test_bos_eos(tok):
    plain = tok.encode("some text", bos=False)
    assert tok.encode("some text") == [1, *plain]
    assert tok.encode("some text", bos=False, eos=True) == [*plain, 2]
    assert tok.encode("some text", bos=True, eos=True) == [1, *plain, 2]


def test_encode_batch_matches_encode(tok):
    texts = ["first document", "second\none", "", "ünïcödé"]
    assert tok.encode_batch(texts, eos=True) == [tok.encode(t, eos=True) for t in texts]


def test_decode_drops_special_and_out_of_range_ids(tok):
    ids = tok.encode("abc def", bos=False)
    assert tok.decode([1, *ids, 2, 3, 8192, 10_000]) == "abc def"


def test_check_fits(tok):
    tok.check_fits(8192)
    tok.check_fits(8256)
    with pytest.raises(ValueError, match=r"8192 tokens.*vocab_size is 8000.*Fix") as e:
        tok.check_fits(8000)
    assert str(tok.path) in str(e.value)


def test_missing_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.model"):
        Tokenizer(tmp_path / "nope.model")


@pytest.mark.parametrize("content", [b"", b"definitely not a protobuf \xff\xfe"])
def test_corrupt_model(tmp_path, content):
    path = tmp_path / "bad.model"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a sentencepiece model"):
        Tokenizer(path)


def test_train_throwaway_model(tmp_path, text_corpus):
    path = _tiny_model(text_corpus, tmp_path / "tiny.model")
    tok = Tokenizer(path)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 3)
    assert 260 < tok.vocab_size <= 320
    text = (text_corpus / "doc07.txt").read_text() + "unseen: ß∑🙂"
    assert tok.decode(tok.encode(text)) == text
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


def test_training_is_reproducible(tmp_path, text_corpus):
    a = _tiny_model(text_corpus, tmp_path / "a.model").read_bytes()
    b = _tiny_model(text_corpus, tmp_path / "b.model").read_bytes()
    assert a == b


def test_llama_style_model_without_pad(tmp_path, text_corpus):
    """Llama's tokenizer.model has pad_id -1 (no pad piece): pad_id must come out as None."""
    tok = Tokenizer(_tiny_model(text_corpus, tmp_path / "llama.model", pad_id=-1))
    assert tok.pad_id is None
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    assert tok.decode(tok.encode("the quick brown fox", eos=True)) == "the quick brown fox"


def test_cli_on_default_corpus(tmp_path):
    out = tmp_path / "cli.model"
    train_script.main(["default", "--output", str(out), "--vocab_size", "400", "--max_documents", "20"])
    tok = Tokenizer(out)
    assert tok.vocab_size == 400
    assert tok.decode(tok.encode("import os\n")) == "import os\n"


def test_sentences_keep_newlines_and_skip_blank():
    docs = ["a\nb\n" * 3, "   \n\n", "x" * 10]
    chunks = list(train_script.sentences(docs, chunk_chars=4))
    assert chunks == ["a\nb\n", "a\nb\n", "a\nb\n", "x" * 10]
