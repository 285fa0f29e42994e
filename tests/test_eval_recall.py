"""`hope eval recall`: needles and associative-recall sequences are built as specified, and a perfect copying model
scores 1 on what it can see and 0 on what it cannot, with the recurrent state carrying what lies before the window."""

import json
import random

import pytest
import torch
import yaml
from torch import nn

from hope.cli import main
from hope.config import ModelConfig
from hope.evaluation.recall import Reading, associative_sample, evaluate_recall, hay_tokens, needle_sample
from hope.model import HopeLM
from hope.tokenizer import Tokenizer


class InductionOracle(nn.Module):
    """Predicts the token that followed the longest earlier match (up to 12 tokens) of the current suffix: a perfect
    copier of everything it can see, i.e. its input window plus, if ``stateful``, the tokens kept in its state."""

    def __init__(self, max_seq_len: int, stateful: bool) -> None:
        super().__init__()
        self.config = ModelConfig(max_seq_len=max_seq_len)
        self.stateful = stateful
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, idx, state=None):
        memory = state[0] if self.stateful and state is not None else idx.new_zeros(idx.shape[0], 0)
        history = torch.cat([memory, idx], dim=1)
        logits = torch.zeros(*idx.shape, self.config.padded_vocab_size)
        for b, h in enumerate(history.tolist()):
            for t in range(idx.shape[1]):
                pos, best, guess = memory.shape[1] + t, 0, None
                for j in range(pos - 1, -1, -1):
                    n = 0
                    while n < 12 and j - n >= 0 and h[j - n] == h[pos - n]:
                        n += 1
                    if n > best:
                        best, guess = n, h[j + 1]
                    if best == 12:
                        break
                if guess is not None:
                    logits[b, t, guess] = 10.0
        return logits, [history if self.stateful else None]


def test_needle_sample_layout():
    tok, rng = Tokenizer.default(), random.Random(0)
    hay = hay_tokens(tok, 2000, "generated")
    for kind in ("passkey", "number", "word"):
        prompt, answer = needle_sample(tok, hay, kind, 300, 0.5, rng)
        assert len(prompt) == 300 and prompt[0] == tok.bos_id
        text, value = tok.decode(prompt), tok.decode(answer).strip()
        assert text.count(value) == 1 + (kind == "passkey")  # the passkey needle states it twice
        assert abs(text.index(value) / len(text) - 0.5) < 0.1  # the needle sits at the asked depth
    assert needle_sample(tok, hay, "passkey", 10, 0.5, rng) is None  # too short for needle and question


def test_associative_targets_are_the_values():
    tok = Tokenizer.default()
    tokens, targets = associative_sample(tok, 5, random.Random(1))
    text = tok.decode(tokens)
    assert text.startswith("Remember these pairs.\n") and len(targets) == 5
    for t in targets:
        value = tok.decode([tokens[i + 1] for i in t]).strip()
        assert value.isdigit() and text.count(f": {value}\n") == 2  # once in the pairs, once answered


@pytest.mark.parametrize("hay", ["generated", "default"])
def test_copier_scores_what_it_can_see(hay):
    tok = Tokenizer.default()
    kwargs = dict(
        kinds=["passkey", "number", "word"],
        lengths=[96, 320],
        depths=[0.0],
        samples=2,
        hay=hay,
        pairs=[4, 24],
        pair_samples=1,
    )
    window_only = evaluate_recall(InductionOracle(128, stateful=False), tok, reading=Reading(progress=False), **kwargs)
    for kind in ("passkey", "number", "word"):
        rows = window_only["needle"]["by_kind"][kind]
        assert rows["96"]["accuracy"] == 1.0 and rows["320"]["accuracy"] == 0.0  # needle inside / before window
    pairs = window_only["associative"]["by_pairs"]
    assert pairs["4"]["accuracy"] == 1.0 and pairs["24"]["accuracy"] < 1.0
    assert pairs["24"]["context_tokens"] > 128

    memory = evaluate_recall(InductionOracle(128, stateful=True), tok, reading=Reading(progress=False), **kwargs)
    assert all(row["accuracy"] == 1.0 for rows in memory["needle"]["by_kind"].values() for row in rows.values())
    assert all(row["accuracy"] == 1.0 for row in memory["associative"]["by_pairs"].values())

    reset = evaluate_recall(
        InductionOracle(128, stateful=True), tok, reading=Reading(carry=False, progress=False), **kwargs
    )
    assert reset["needle"]["by_kind"]["passkey"]["320"]["accuracy"] == 0.0  # reset drops what the state would hold


def test_recall_command(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = HopeLM(ModelConfig(n_layer=1, n_head=2, n_embd=32, intermediate_size=64, max_seq_len=128))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "model.safetensors")
    (tmp_path / "model_config.yaml").write_text(yaml.safe_dump(model.config.to_dict()))
    out = tmp_path / "recall"
    main(
        [
            "eval",
            "recall",
            "--checkpoint",
            str(tmp_path / "model.safetensors"),
            "--lengths",
            "[96, 256]",
            "--depths",
            "[0.5]",
            "--samples",
            "1",
            "--pairs",
            "[4]",
            "--pair_samples",
            "1",
            "--hay",
            "generated",
            "--out_dir",
            str(out),
            "--progress",
            "false",
        ]
    )
    report = json.loads((out / "recall.json").read_text())
    assert set(report["needle"]["by_kind"]) == {"passkey", "number", "word"} and report["window"] == 128
    assert 0.0 <= report["associative"]["by_pairs"]["4"]["accuracy"] <= 1.0
    assert (out / "recall.png").stat().st_size > 1000
