"""Data that is not what it seems: other encodings, broken JSON Lines, non-text columns get an error that names
the file (and line, or column) and the fix; byte-order marks are honoured."""

import codecs
import json
import logging

import pytest

from hope.data.sources import iter_documents
from hope.lit.datamodule import TextDataModule

TEXT = "Café crème, naïve façade: déjà vu.\n" * 40  # 1,400 characters, 240 of them not ASCII


def texts(path, **kwargs) -> list[str]:
    return [t for _, t in iter_documents(str(path), **kwargs)]


def test_latin1_is_an_error_naming_file_share_and_option(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(TEXT.encode("latin-1"))
    with pytest.raises(
        ValueError, match=rf"data.source: {path} is not UTF-8: 17.14% of its 1,400 bytes .*data.encoding"
    ):
        texts(path)
    assert texts(path, encoding="latin-1") == [TEXT]


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-8"])
def test_byte_order_marks_are_honoured(tmp_path, codec):
    bom = {"utf-16-le": codecs.BOM_UTF16_LE, "utf-16-be": codecs.BOM_UTF16_BE, "utf-32-le": codecs.BOM_UTF32_LE}
    path = tmp_path / "bom.txt"
    path.write_bytes(bom.get(codec, codecs.BOM_UTF8) + TEXT.encode(codec))
    assert texts(path) == [TEXT]


def test_utf16_without_bom_is_an_error_that_names_the_codec(tmp_path):
    path = tmp_path / "utf16.txt"
    path.write_bytes(TEXT.encode("utf-16-le"))
    with pytest.raises(ValueError, match=r"UTF-16 without a byte-order mark; set data.encoding utf-16-le"):
        texts(path)
    assert texts(path, encoding="utf-16-le") == [TEXT]


def test_binary_file_is_an_error(tmp_path):
    path = tmp_path / "weights.txt"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ValueError, match=rf"{path} is not UTF-8: .* or a binary file"):
        texts(path)


def test_a_few_stray_bytes_are_a_warning(tmp_path, caplog):
    path = tmp_path / "mostly.txt"
    path.write_bytes(TEXT.encode() * 10 + b"\xff")  # 1 bad byte in 16,401
    hope_logs = logging.getLogger("hope")
    hope_logs.addHandler(caplog.handler)  # `hope` may have set propagate=False on its logger
    try:
        assert texts(path) == [TEXT * 10 + "\ufffd"]
    finally:
        hope_logs.removeHandler(caplog.handler)
    assert f"{path} is not UTF-8: 0.01% of its 16,401 bytes" in caplog.text


def test_unknown_codec(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"data.encoding='utf-9' is not a codec Python knows"):
        texts(tmp_path / "a.txt", encoding="utf-9")


def test_broken_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "one"}\n\n{"text": "two"\n{"text": "three"}\n')
    with pytest.raises(ValueError, match=rf"{path}, line 3: not valid JSON .*repair or delete that line"):
        texts(path)
    path.write_text('{"text": "one"}\n["not", "an", "object"]\n')
    with pytest.raises(ValueError, match=rf"{path}, line 2: a JSON list, not an object"):
        texts(path)


def test_non_string_text_column_names_column_and_type(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps({"text": "ok", "label": i}) for i in range(3)))
    with pytest.raises(ValueError, match=rf"data.text_field='label' in {path}: row 0 holds a int \('0'\), not text"):
        texts(path, text_field="label")


def test_datamodule_reads_with_data_encoding(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(TEXT.encode("latin-1"))
    dm = TextDataModule(
        source=str(path), seq_len=16, val_fraction=0.0, cache_dir=str(tmp_path / "c"), encoding="latin-1"
    )
    dm.setup("fit")
    first = dm.train_blocks.tokens[: len(dm.tokenizer.encode(TEXT[:200]))].tolist()
    assert dm.tokenizer.decode(first).startswith("Café crème")
    with pytest.raises(ValueError, match="data.encoding"):
        TextDataModule(source=str(path), seq_len=16, val_fraction=0.0, cache_dir=str(tmp_path / "c")).setup("fit")
