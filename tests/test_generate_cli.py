"""`hope generate`: the streamed tokens are hope.generate's, top_p keeps the nucleus, the command prints as it goes."""

import pytest
import torch

from hope.cli import main
from hope.config import ModelConfig
from hope.generate import generate, generate_stream, nucleus
from hope.model import HopeLM
from hope.ttl import TestTimeLearner
from tests.test_generate import ALL, model_of
from tests.test_titans_models import tokens
from tests.test_ttl import small_model


@pytest.mark.parametrize("family", ALL)
def test_stream_draws_the_tokens_of_generate(family):
    """Same seed, same sampler: generate_stream hands out exactly the tokens and the state generate() returns."""
    model, prompt = model_of(family), tokens(11)
    kw = dict(temperature=1.0, top_k=20, top_p=0.9)
    expected, state = generate(model, prompt, 8, generator=torch.Generator().manual_seed(3), **kw)
    stream = generate_stream(model, prompt, 8, generator=torch.Generator().manual_seed(3), **kw)
    drawn = []
    with pytest.raises(StopIteration) as done:
        while True:
            drawn.append(next(stream))
    assert torch.equal(torch.cat([prompt, *drawn], dim=1), expected)
    assert (done.value.value is None) == (state is None)


@pytest.mark.parametrize("family", ["hope", "hope-attention"])
def test_stream_with_a_learner_draws_the_tokens_of_generate(family):
    model, prompt = small_model(family), torch.randint(0, 64, (1, 9), generator=torch.Generator().manual_seed(1))
    expected, _ = generate(model, prompt, 6, temperature=0, learner=TestTimeLearner(model, inner_lr=0.5))
    drawn = list(generate_stream(model, prompt, 6, temperature=0, learner=TestTimeLearner(model, 0.5)))
    assert torch.equal(torch.cat([prompt, *drawn], dim=1), expected)


def nucleus_reference(logits: list[float], top_p: float, temperature: float) -> set[int]:
    """Sort by probability (float64, one by one) and keep tokens until their sum reaches top_p."""
    probs = torch.softmax(torch.tensor(logits, dtype=torch.float64) / temperature, dim=0).tolist()
    kept, total = set(), 0.0
    for i in sorted(range(len(probs)), key=lambda i: -probs[i]):
        if total >= top_p:
            break
        kept.add(i)
        total += probs[i]
    return kept


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_keeps_the_nucleus(top_p):
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 3
    filtered = nucleus(logits, top_p, temperature=0.7)
    for row, out in zip(logits.tolist(), filtered, strict=True):
        assert {i for i, v in enumerate(out.tolist()) if v != float("-inf")} == nucleus_reference(row, top_p, 0.7)
    assert torch.equal(nucleus(logits, 1.0, 0.7), logits)


def write_checkpoint(path, config: ModelConfig):
    torch.manual_seed(0)
    model = HopeLM(config)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "model_config": config.to_dict()}, path)
    return path


TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2, "intermediate_size": 64}


def test_generate_command_streams_and_matches_the_unstreamed_text(tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "m.ckpt", ModelConfig.from_preset("debug", **TINY))
    (tmp_path / "prompt.txt").write_text("def fibonacci(n):")
    common = ["generate", "--checkpoint", str(ckpt), "--max_new_tokens", "12", "--seed", "7", "--top_p", "0.9"]
    main([*common, "--prompt", "def fibonacci(n):"])
    streamed = capsys.readouterr().out
    main([*common, "--prompt_file", str(tmp_path / "prompt.txt"), "--stream", "false"])
    assert capsys.readouterr().out == streamed
    assert streamed.startswith("def fibonacci(n):") and len(streamed) > len("def fibonacci(n):\n")
    with pytest.raises(ValueError, match="exactly one of --prompt TEXT and --prompt_file PATH"):
        main(["generate", "--checkpoint", str(ckpt)])
    with pytest.raises(ValueError, match=r"--top_p=1.5 is out of range"):
        main([*common, "--prompt", "x", "--top_p", "1.5"])


def test_generate_command_ttl(tmp_path, capsys):
    hope = write_checkpoint(tmp_path / "hope.ckpt", ModelConfig.from_preset("hope-debug", n_layer=1))
    main(["generate", "--checkpoint", str(hope), "--prompt", "x = 1", "--max_new_tokens", "4", "--ttl", "true"])
    assert capsys.readouterr().out.startswith("x = 1")
    transformer = write_checkpoint(tmp_path / "t.ckpt", ModelConfig.from_preset("debug", **TINY))
    with pytest.raises(ValueError, match="has no CMS levels; use a hope or hope-attention model"):
        main(["generate", "--checkpoint", str(transformer), "--prompt", "x", "--ttl", "true"])
