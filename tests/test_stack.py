"""Ad-hoc level stacking (hope stack): a Hope-Attention model from a Transformer++ reproduces its logits."""

import json

import pytest
import torch

from hope.checkpoint import atomic_torch_save, load_model
from hope.cli import main
from hope.config import ModelConfig
from hope.lit.module import HopeLitModule
from hope.model import HopeLM
from hope.ttl import TestTimeLearner

TINY = dict(n_layer=2, n_embd=32, n_head=2, intermediate_size=48, vocab_size=64, padding_multiple=8, max_seq_len=64)


def transformer_checkpoint(path, dtype=torch.float64):
    torch.manual_seed(0)
    model = HopeLM(ModelConfig.from_preset("debug", **TINY)).to(dtype)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    atomic_torch_save({"state_dict": state, "model_config": model.config.to_dict()}, path)  # as `hope fit` stores
    return model


@pytest.mark.parametrize("mlp_level", [1, 3])
def test_stacked_model_reproduces_transformer(tmp_path, mlp_level, capsys):
    transformer = transformer_checkpoint(tmp_path / "t.ckpt")
    main(
        [
            "stack",
            "--checkpoint",
            str(tmp_path / "t.ckpt"),
            "--preset",
            "hope-attention-debug",
            "--out",
            str(tmp_path / "stacked"),
            "--mlp_level",
            str(mlp_level),
        ]
    )
    assert "--model.init_from" in capsys.readouterr().out
    stacked = load_model(tmp_path / "stacked" / "model.ckpt").double()
    cfg = stacked.config
    assert cfg.family == "hope-attention" and len(cfg.cms_levels) == 3  # three levels from one MLP per block
    assert cfg.resolved_cms_hidden[mlp_level - 1] == 48
    idx = torch.randint(0, 64, (2, 40))
    expected = transformer(idx)[0]
    torch.testing.assert_close(stacked(idx)[0], expected, rtol=1e-12, atol=1e-12)
    logits, _ = TestTimeLearner(stacked, inner_lr=0.0).step(idx)  # learning in context with inner lr 0
    torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-12)
    logits, _ = TestTimeLearner(stacked, inner_lr=0.1).step(idx)  # a positive inner lr does change the function
    assert not torch.allclose(logits, expected)


def test_stack_to_ckpt_file_and_errors(tmp_path):
    transformer_checkpoint(tmp_path / "t.ckpt")
    main(["stack", "--checkpoint", str(tmp_path / "t.ckpt"), "--out", str(tmp_path / "s.ckpt")])
    assert load_model(tmp_path / "s.ckpt").config.family == "hope-attention"
    overrides = json.loads((tmp_path / "overrides.json").read_text())  # what `hope fit --model.init_from` needs
    module = HopeLitModule("hope-attention-debug", overrides, init_from=str(tmp_path / "s.ckpt"))
    assert module.config.family == "hope-attention"
    with pytest.raises(ValueError, match="needs 'hope-attention'"):
        main(["stack", "--checkpoint", str(tmp_path / "t.ckpt"), "--preset", "hope-debug", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="out of range"):
        main(["stack", "--checkpoint", str(tmp_path / "t.ckpt"), "--out", str(tmp_path), "--mlp_level", "4"])
