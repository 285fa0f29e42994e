"""No silent misreads of the command line, and messages that point the right way."""

import json
import sys
import warnings

import pytest
import torch

from hope.cli import USAGE, main
from hope.config import ModelConfig
from hope.evaluation.cli import format_perplexity
from tests.test_cli import fit_args, run_fit
from tests.test_generate_cli import TINY, write_checkpoint


def test_key_prefixes_are_refused_with_a_suggestion(tmp_path, text_corpus, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_fit(tmp_path, text_corpus, "--trainer.max_step=20")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --trainer.max_step=20" in err
    assert "--trainer.max_step: did you mean --trainer.max_steps?" in err


def test_negative_value_after_a_space_parses(tmp_path, text_corpus):
    """`--model.optim.lr -1e-3` reaches the value check, whose message stands alone (no Union dump)."""
    with pytest.raises(ValueError) as err:
        run_fit(tmp_path, text_corpus, "--model.optim.lr", "-1e-3")
    assert str(err.value) == "model.optim.lr=-0.001 must be > 0."
    with pytest.raises(ValueError, match=r"^model.optim.min_lr_ratio=-0.5 must be in \[0, 1\].$"):
        run_fit(tmp_path, text_corpus, "--model.optim.min_lr_ratio=-0.5")


def test_yaml_syntax_error_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_steps: [1\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(bad)])
    assert f"error: --config {bad}: not valid YAML: expected ',' or ']'" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_accelerator_without_gpu_is_one_line(tmp_path, text_corpus):
    with pytest.raises(SystemExit) as exit_info:
        run_fit(tmp_path, text_corpus, "--trainer.accelerator", "gpu")
    message = str(exit_info.value.code)
    assert "\n" not in message and message.startswith("error: trainer.accelerator='gpu', but this machine has no")


def test_help_lists_every_subcommand(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    assert out == USAGE
    for name in ("fit", "validate", "test", "finetune", "eval", "generate", "convert", "stack", "config"):
        assert any(line.split()[:1] == [name] and len(line.split()) > 3 for line in out.splitlines()), name


def test_finetune_help_shows_the_finetune_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: hope finetune") and "--model.freeze" in out and "--method" in out


def test_no_args_warning_and_no_empty_log_dir(tmp_path, text_corpus, monkeypatch):
    """`hope fit` passes its arguments on: Lightning's "args parameter ... not recommended" warning is not shown;
    a run that fails while starting leaves no empty lightning_logs/version_N behind."""
    root = tmp_path / "err"
    args = fit_args(root, text_corpus, "--model.overrides", '{"vocab_size": 1000}', steps=1)
    monkeypatch.setattr(sys, "argv", ["hope", *args])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="vocab_size"):
            main(args)
    assert not [w for w in caught if "args parameter" in str(w.message)]
    assert not list((root / "lightning_logs").glob("version_*"))


def test_eval_takes_a_run_directory(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    write_checkpoint(run / "checkpoints" / "last.ckpt", ModelConfig.from_preset("debug", **TINY))
    (tmp_path / "doc.txt").write_text("a small document to score.\n" * 5)
    out = tmp_path / "ppl.json"
    args = ["eval", "perplexity", "--source", str(tmp_path / "doc.txt"), "--progress", "false", "--out", str(out)]
    main([*args, "--checkpoint", str(run)])
    assert json.loads(out.read_text())["tokens"] > 0
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=rf"is a directory with no complete checkpoint.*{empty}/checkpoints"):
        main([*args, "--checkpoint", str(empty)])


def test_eval_and_convert_errors_do_not_suggest_resuming(tmp_path):
    good = write_checkpoint(tmp_path / "good.ckpt", ModelConfig.from_preset("debug", **TINY))
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(good.read_bytes()[:1000])
    (tmp_path / "doc.txt").write_text("text\n")
    for command in (
        ["eval", "perplexity", "--checkpoint", str(corrupt), "--source", str(tmp_path / "doc.txt")],
        ["convert", str(corrupt), str(tmp_path / "out")],
    ):
        with pytest.raises(ValueError, match="corrupt or truncated") as err:
            main(command)
        assert "resum" not in str(err.value).lower()


def test_convert_refuses_to_overwrite(tmp_path):
    ckpt = write_checkpoint(tmp_path / "m.ckpt", ModelConfig.from_preset("debug", **TINY))
    main(["convert", str(ckpt), str(tmp_path / "out")])
    with pytest.raises(FileExistsError, match=r"model.safetensors' already exists. Fix: pass --overwrite"):
        main(["convert", str(ckpt), str(tmp_path / "out")])
    main(["convert", str(ckpt), str(tmp_path / "out"), "--overwrite"])


def test_word_perplexity_is_a_headline_only_for_prose():
    report = {"documents": 2, "tokens": 1500, "token_perplexity": 20.0, "bits_per_byte": 1.1, "window": 256}
    prose = format_perplexity({**report, "words": 1000, "word_perplexity": 89.4}, "rolling", "reset")
    assert "word perplexity 89.400" in prose
    code = format_perplexity({**report, "words": 180, "word_perplexity": 1.6e8}, "rolling", "reset")
    assert "160000000" not in code and "word perplexity left out: 8.3 tokens per whitespace word" in code
