"""Resuming: ``last`` is the newest complete checkpoint, a copied run keeps writing last.ckpt, and a setting given
on resume is applied and logged, or refused with both values; never silently dropped."""

import logging
import os
import shutil

import pytest

from hope.checkpoint import load_checkpoint_file
from hope.cli import main
from tests.test_cli import fit_args, fit_recording

RUN_LOGS = "lightning.pytorch"  # rank_zero_info's logger


def test_last_is_the_newest_complete_checkpoint(tmp_path, text_corpus, caplog):
    """A kill while last.ckpt.tmp was written leaves an older last.ckpt beside a complete newer step file."""
    root = tmp_path / "run"
    ckpts = root / "checkpoints"
    main(fit_args(root, text_corpus, "--checkpoint.every_n_train_steps", "2", steps=4))
    shutil.copy(ckpts / "step000002.ckpt", ckpts / "last.ckpt")  # the last.ckpt of step 2 ...
    (ckpts / "last.ckpt.tmp").write_bytes((ckpts / "step000004.ckpt").read_bytes()[:5000])  # ... its cut rewrite
    os.utime(ckpts / "last.ckpt", (1000, 1000))
    truncated = ckpts / "step000005.ckpt"  # newer still, but cut short (a copy interrupted): never chosen
    truncated.write_bytes((ckpts / "step000004.ckpt").read_bytes()[:5000])
    hope_logs = logging.getLogger("hope")  # `hope` gives it its own handler (no propagation): listen there too
    hope_logs.addHandler(caplog.handler)
    try:
        resumed = fit_recording(fit_args(root, text_corpus, steps=6), ckpt_path="last")  # Trainer.fit(ckpt_path=)
    finally:
        hope_logs.removeHandler(caplog.handler)
    assert sorted(resumed) == [5, 6]
    assert f"skipping {truncated}: the file is incomplete" in caplog.text

    (ckpts / "last.ckpt").unlink()  # the command line resolves `last` the same way
    with caplog.at_level(logging.INFO, logger=RUN_LOGS):
        main(fit_args(root, text_corpus, "--ckpt_path", "last", steps=7))
    assert f"Restored all states from the checkpoint at {ckpts / 'step000006.ckpt'}" in caplog.text
    assert load_checkpoint_file(ckpts / "last.ckpt")["global_step"] == 7


def test_copied_run_folder_resumes_into_last_ckpt(tmp_path, text_corpus):
    main(fit_args(tmp_path / "a", text_corpus, steps=3))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    main(fit_args(tmp_path / "b", text_corpus, "--ckpt_path", "last", steps=6))
    names = {p.name for p in (tmp_path / "b" / "checkpoints").glob("*.ckpt")}
    assert "last-v1.ckpt" not in names, names
    assert load_checkpoint_file(tmp_path / "b" / "checkpoints" / "last.ckpt")["global_step"] == 6


def test_changed_optimizer_settings_apply_and_are_logged(tmp_path, text_corpus, caplog):
    """Typed optimizer settings win over the checkpoint's restored optimizer (an explicit file used to have them
    replaced by the checkpoint's hyper-parameters, `last` by its optimizer state), and each change is logged."""
    root = tmp_path / "run"
    main(fit_args(root, text_corpus, steps=3))  # debug.yaml: lr 2e-3, betas (0.9, 0.95), weight decay 0.1
    last = root / "checkpoints" / "last.ckpt"
    changed = ["--model.optim.lr", "1e-3", "--model.optim.weight_decay", "0.05", "--model.optim.betas", "[0.8, 0.9]"]
    with caplog.at_level(logging.INFO, logger=RUN_LOGS):
        main(fit_args(root, text_corpus, "--ckpt_path", str(last), *changed, steps=5))
    for line in [
        "[hope] resume: model.optim.lr = 0.001 (checkpoint: 0.002), from step 4",
        "[hope] resume: model.optim.weight_decay = 0.05 (checkpoint: 0.1), from step 4",
        "[hope] resume: model.optim.betas = (0.8, 0.9) (checkpoint: (0.9, 0.95)), from step 4",
        "[hope] resume: schedule length (trainer.max_steps) = 5 (checkpoint: 3), from step 4",
    ]:
        assert line in caplog.text
    ckpt = load_checkpoint_file(last)
    assert ckpt["global_step"] == 5 and ckpt["hyper_parameters"]["optim"]["lr"] == 1e-3
    decayed, vectors = ckpt["optimizer_states"][0]["param_groups"]
    assert (decayed["initial_lr"], decayed["betas"], decayed["weight_decay"]) == (1e-3, (0.8, 0.9), 0.05)
    assert vectors["weight_decay"] == 0.0  # the per-group rule stays: vectors are not decayed
    assert ckpt["lr_schedulers"][0]["base_lrs"] == [1e-3, 1e-3]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger=RUN_LOGS):  # `last`; the untyped betas stay the checkpoint's
        main(fit_args(root, text_corpus, "--ckpt_path", "last", "--model.optim.lr", "5e-4", steps=6))
    assert "[hope] resume: model.optim.lr = 0.0005 (checkpoint: 0.001), from step 6" in caplog.text
    assert "model.optim.betas =" not in caplog.text  # debug.yaml gives no betas: the checkpoint's (0.8, 0.9) stay
    assert load_checkpoint_file(last)["optimizer_states"][0]["param_groups"][0]["initial_lr"] == 5e-4


def test_contradicting_settings_are_refused_with_both_values(tmp_path, text_corpus, capsys):
    """Another model or data position than the checkpoint's is an error naming the key and both values; what is
    not given comes from the checkpoint (`hope validate --ckpt_path X` alone validates the checkpoint's model)."""
    root = tmp_path / "run"
    main(fit_args(root, text_corpus, steps=3))
    bigger = '{"n_layer": 3, "n_embd": 64, "n_head": 2, "intermediate_size": 128}'
    with pytest.raises(ValueError, match=r"model given differs from the checkpoint's.*n_layer: checkpoint 2, given 3"):
        main(fit_args(root, text_corpus, "--ckpt_path", "last", "--model.overrides", bigger, steps=6))
    for key, value, change in [("batch_size", "8", "4 -> 8"), ("seq_len", "16", "32 -> 16")]:
        with pytest.raises(ValueError, match=rf"data settings changed since the checkpoint: {key}: {change}"):
            main(fit_args(root, text_corpus, "--ckpt_path", "last", f"--data.{key}", value, steps=6))

    capsys.readouterr()
    data = ["--data.source", str(text_corpus), "--data.val_fraction", "0.2", "--data.seq_len", "32"]
    last = str(root / "checkpoints" / "last.ckpt")
    main(["validate", "--trainer.default_root_dir", str(tmp_path / "val"), *data, "--ckpt_path", last])
    assert "val_loss" in capsys.readouterr().out
