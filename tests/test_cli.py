"""`hope fit` end to end through the real LightningCLI: checkpoints, logs, exact resume, clear errors."""

import shutil
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from hope.checkpoint import load_checkpoint_file
from hope.cli import main
from hope.lit.cli import build_cli

DEBUG_YAML = str(Path(__file__).parents[1] / "configs" / "pretrain" / "debug.yaml")


def fit_args(root: Path, corpus: Path, *extra: str, steps: int = 6) -> list[str]:
    return [
        "fit",
        "--config",
        DEBUG_YAML,
        "--trainer.default_root_dir",
        str(root),
        "--trainer.max_steps",
        str(steps),
        "--trainer.val_check_interval",
        "3",
        "--trainer.log_every_n_steps",
        "1",
        "--checkpoint.every_n_train_steps",
        "3",
        "--model.overrides",
        '{"n_layer": 2, "n_embd": 64, "n_head": 2, "intermediate_size": 128}',
        "--model.optim.warmup_steps",
        "2",
        "--data.source",
        str(corpus),
        "--data.val_fraction",
        "0.2",
        "--data.seq_len",
        "32",
        "--data.batch_size",
        "4",
        "--data.max_val_blocks",
        "4",
        *extra,
    ]


class Recorder(Callback):
    """Loss and a fingerprint of the batch at every training step."""

    def __init__(self):
        self.steps = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps[trainer.global_step] = (outputs["loss"].item(), batch["input_ids"].sum().item())


def fit_recording(args: list[str], ckpt_path: str | None = None) -> dict:
    cli = build_cli(args[1:], run=False)  # run=False takes the arguments without the subcommand
    recorder = Recorder()
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    return recorder.steps


def test_fit_writes_checkpoints_config_and_logs(tmp_path, text_corpus, capsys):
    root = tmp_path / "run"
    main(fit_args(root, text_corpus))
    ckpts = root / "checkpoints"
    assert {"last.ckpt", "step000003.ckpt", "step000006.ckpt", "config.yaml", "model_config.yaml"} <= {
        p.name for p in ckpts.iterdir()
    }
    assert not list(ckpts.glob("*.tmp")), "atomic save left a temporary file behind"
    assert "seq_len: 32" in (ckpts / "config.yaml").read_text()
    assert "n_layer: 2" in (ckpts / "model_config.yaml").read_text()
    assert list((root / "lightning_logs").glob("version_0/events.out.tfevents.*"))
    ckpt = load_checkpoint_file(ckpts / "last.ckpt")
    assert ckpt["global_step"] == 6
    assert ckpt["model_config"]["n_layer"] == 2
    assert ckpt["TextDataModule"]["consumed_batches"] == 6
    out = capsys.readouterr().out
    assert "before training: val_loss" in out and "step 6: val_loss" in out
    assert f"checkpoint: {ckpts / 'last.ckpt'}" in out and "TensorBoard logs:" in out


def test_tensorboard_scalars(tmp_path, text_corpus):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = tmp_path / "run"
    main(fit_args(root, text_corpus))
    events = EventAccumulator(str(next((root / "lightning_logs").glob("version_0")))).Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "train/loss",
        "train/ppl",
        "train/lr",
        "train/grad_norm",
        "train/tokens_per_sec",
        "val/loss",
        "val/ppl",
    } <= tags


def test_resume_is_exact(tmp_path, text_corpus):
    """Resuming from the step-3 checkpoint replays steps 4-6 with the same batches and the same losses."""
    full = fit_recording(fit_args(tmp_path / "a", text_corpus))
    assert sorted(full) == [1, 2, 3, 4, 5, 6]

    resumed_root = tmp_path / "b"
    (resumed_root / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "a" / "checkpoints" / "step000003.ckpt", resumed_root / "checkpoints" / "last.ckpt")
    resumed = fit_recording(fit_args(resumed_root, text_corpus), ckpt_path="last")
    assert sorted(resumed) == [4, 5, 6]
    for step in (4, 5, 6):
        assert resumed[step] == full[step], f"step {step}: {resumed[step]} != {full[step]}"


def test_cli_ckpt_path_last_continues(tmp_path, text_corpus):
    root = tmp_path / "run"
    main(fit_args(root, text_corpus, steps=3))
    main(fit_args(root, text_corpus, "--ckpt_path", "last", steps=6))
    last = root / "checkpoints" / "last.ckpt"
    assert load_checkpoint_file(last)["global_step"] == 6
    main(fit_args(root, text_corpus, "--ckpt_path", str(last), steps=9))  # an explicit file works the same way
    assert load_checkpoint_file(last)["global_step"] == 9


def test_init_from_loads_weights_but_not_training_state(tmp_path, text_corpus):
    root = tmp_path / "run"
    main(fit_args(root, text_corpus, steps=3))
    last = root / "checkpoints" / "last.ckpt"
    cli = build_cli(fit_args(tmp_path / "new", text_corpus, "--model.init_from", str(last))[1:], run=False)
    state = load_checkpoint_file(last)["state_dict"]
    for name, value in cli.model.state_dict().items():
        torch.testing.assert_close(value, state[name], rtol=0, atol=0)
    assert cli.trainer.global_step == 0


# -- clear errors ---------------------------------------------------------------------------------------------
def run_fit(tmp_path, corpus, *extra):
    main(fit_args(tmp_path / "err", corpus, *extra, steps=1))


def test_unknown_preset(tmp_path, text_corpus):
    with pytest.raises(ValueError, match=r"model.preset='nope' is not a known preset"):
        run_fit(tmp_path, text_corpus, "--model.preset", "nope")


def test_unknown_model_key(tmp_path, text_corpus):
    with pytest.raises(ValueError, match=r"Unknown model config key 'n_layers'.*Did you mean \['n_layer'\]"):
        run_fit(tmp_path, text_corpus, "--model.overrides", '{"n_layers": 2}')


def test_unknown_config_key(tmp_path, text_corpus, capsys):
    with pytest.raises(SystemExit):
        run_fit(tmp_path, text_corpus, "--data.seq_length", "32")
    assert "seq_length" in capsys.readouterr().err


def test_vocab_mismatch(tmp_path, text_corpus):
    with pytest.raises(ValueError, match=r"8192.*1000|1000.*8192"):
        run_fit(tmp_path, text_corpus, "--model.overrides", '{"vocab_size": 1000}')


def test_seq_len_longer_than_model_supports(tmp_path, text_corpus):
    with pytest.raises(ValueError, match=r"data.seq_len=32 is longer than the model supports \(max_seq_len=16"):
        run_fit(tmp_path, text_corpus, "--model.overrides", '{"max_seq_len": 16}')


def test_missing_data_path(tmp_path, text_corpus):
    with pytest.raises(ValueError, match="data.source=.*nowhere.txt.*no such file"):
        run_fit(tmp_path, text_corpus, "--data.source", str(tmp_path / "nowhere.txt"))


def test_empty_data_folder(tmp_path, text_corpus):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="data.source"):
        run_fit(tmp_path, text_corpus, "--data.source", str(empty))


def test_missing_checkpoint(tmp_path, text_corpus):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_fit(tmp_path, text_corpus, "--ckpt_path", str(tmp_path / "missing.ckpt"))


def test_corrupt_checkpoint(tmp_path, text_corpus):
    root = tmp_path / "run"
    main(fit_args(root, text_corpus, steps=3))
    last = root / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # a save cut short by a crash (what atomic saves prevent)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        main(fit_args(root, text_corpus, "--ckpt_path", str(last), steps=6))


def test_load_model_reproduces_training_logits(tmp_path, text_corpus):
    from hope.checkpoint import load_model

    root = tmp_path / "run"
    main(fit_args(root, text_corpus, steps=3))
    last = root / "checkpoints" / "last.ckpt"
    model = load_model(last)
    state = load_checkpoint_file(last)["state_dict"]
    assert model.config.n_layer == 2
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[f"model.{name}"])
