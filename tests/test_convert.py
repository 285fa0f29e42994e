"""`hope convert`: a checkpoint to safetensors + config, loadable for eval and as --model.init_from."""

import json

import pytest
import torch

from hope.checkpoint import load_checkpoint_file, load_model
from hope.cli import main
from tests.test_cli import fit_args


@pytest.mark.parametrize("tied", [False, True])
def test_convert_round_trip_same_logits(tmp_path, text_corpus, tied):
    root = tmp_path / "run"
    overrides = {"n_layer": 2, "n_embd": 64, "n_head": 2, "tie_embeddings": tied}
    extra = ["--model.overrides", json.dumps(overrides)]
    main(fit_args(root, text_corpus, *extra, steps=2))
    ckpt = root / "checkpoints" / "last.ckpt"
    main(["convert", str(ckpt), str(tmp_path / "export")])
    exported = tmp_path / "export" / "model.safetensors"
    assert (tmp_path / "export" / "model_config.yaml").is_file() and (tmp_path / "export" / "config.yaml").is_file()

    original, converted = load_model(ckpt), load_model(exported)
    idx = torch.randint(0, 8192, (2, 16))
    torch.testing.assert_close(converted(idx)[0], original(idx)[0], rtol=0, atol=0)
    assert (converted.head.weight is converted.embed.weight) == tied


def test_converted_weights_as_init_from(tmp_path, text_corpus):
    root = tmp_path / "run"
    main(fit_args(root, text_corpus, steps=2))
    main(["convert", str(root / "checkpoints" / "last.ckpt"), str(tmp_path / "export")])
    new_root = tmp_path / "finetune"
    main(fit_args(new_root, text_corpus, "--model.init_from", str(tmp_path / "export" / "model.safetensors"), steps=1))
    assert load_checkpoint_file(new_root / "checkpoints" / "last.ckpt")["global_step"] == 1


def test_convert_missing_checkpoint_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["convert", str(tmp_path / "nope.ckpt"), str(tmp_path / "out")])
