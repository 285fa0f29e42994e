"""`hope eval perplexity`: window plans, exact agreement with the HF guide's and lm-eval's loops, recurrent state
rules, hand-checkable values, and the command end to end on a `hope fit` checkpoint."""

import json
import math
import statistics
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from hope.cli import main
from hope.config import ModelConfig
from hope.evaluation.perplexity import evaluate_perplexity, pack_with_positions
from hope.evaluation.scoring import rolling_windows, score_windows, strided_windows
from hope.model import HopeLM
from hope.tokenizer import Tokenizer

DEBUG_YAML = Path(__file__).parents[1] / "configs" / "pretrain" / "debug.yaml"
TEXTS = [
    "def add(a, b):\n    return a + b\n" * 3,
    "import os\nprint(os.getcwd())\n",
    "x = [i * i for i in range(10)]\n" * 5,
]


def tiny_model(max_seq_len: int = 32, seed: int = 0) -> HopeLM:
    torch.manual_seed(seed)
    config = ModelConfig(n_layer=1, n_head=2, n_embd=32, intermediate_size=64, max_seq_len=max_seq_len, vocab_size=8192)
    return HopeLM(config).eval()


class UniformModel(nn.Module):
    """Logits 0 over the real vocabulary and +30 over the padded tail: only slicing the padding away gives
    perplexity = vocab_size (the padded ids would otherwise take almost all the probability)."""

    def __init__(self, vocab_size: int = 8200) -> None:
        super().__init__()
        self.config = ModelConfig(vocab_size=vocab_size, max_seq_len=16)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, idx, state=None):
        logits = torch.zeros(*idx.shape, self.config.padded_vocab_size)
        logits[..., self.config.vocab_size :] = 30.0
        return logits, [None]


class MemoryToy(nn.Module):
    """A stateful model for testing the state rules: its state is every token it has read (in order), and it adds
    +3 to the logits of tokens in that memory, so its scores depend on what the state holds."""

    def __init__(self, base: HopeLM) -> None:
        super().__init__()
        self.base, self.config = base, base.config

    def forward(self, idx, state=None):
        logits, _ = self.base(idx)
        memory = state[0] if state is not None else idx.new_zeros(idx.shape[0], 0)
        if memory.shape[1]:
            logits = logits.clone()
            logits[torch.arange(idx.shape[0])[:, None], :, memory] += 3.0
        return logits, [torch.cat([memory, idx], dim=1)]


def logprob_of_next(model, inputs: list[int], target: int, state=None) -> float:
    logits, _ = model(torch.tensor([inputs]), state)
    return torch.log_softmax(logits[0, -1, : model.config.vocab_size].float(), -1)[target].item()


# -- window plans -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,window,stride", [(2, 4, 2), (10, 4, 2), (17, 5, 3), (33, 8, 7), (9, 9, 1)])
def test_every_target_scored_once(n, window, stride):
    for windows in (strided_windows(n, window, stride), rolling_windows(n, window)):
        covered = [t for w in windows for t in range(w.end - w.n_new, w.end)]
        assert covered == list(range(n - 1))
        assert all(w.end - w.begin <= window for w in windows)


def lm_eval_rolling_windows(tokens, prefix, max_seq_len):
    """lm_eval.utils.get_rolling_token_windows(context_len=1) + make_disjoint_window, copied from lm-eval 0.4."""
    pred_len, predicted = max_seq_len, 0
    first = min(max_seq_len, len(tokens))
    yield [prefix] + tokens[: first - 1], tokens[:first]
    predicted += first
    while predicted < len(tokens):
        n = min(len(tokens) - predicted, pred_len)
        end = predicted + n
        yield tokens[end - max_seq_len - 1 : end - 1], tokens[end - n : end]
        predicted += n


@pytest.mark.parametrize("n_tokens,window", [(5, 8), (20, 8), (24, 8), (37, 6)])
def test_rolling_windows_are_lm_eval_windows(n_tokens, window):
    tokens = list(range(100, 100 + n_tokens))
    seq = [1] + tokens
    ours = [(seq[w.begin : w.end], seq[w.end - w.n_new + 1 : w.end + 1]) for w in rolling_windows(len(seq), window)]
    assert ours == list(lm_eval_rolling_windows(tokens, 1, window))


# -- exact agreement with reference loops --------------------------------------------------------------------------
def hf_guide_nll(model, encodings: torch.Tensor, max_length: int, stride: int) -> tuple[float, int]:
    """The loop of the Hugging Face perplexity guide, on our model (logits sliced to the real vocabulary)."""
    seq_len, prev_end_loc, nll_sum, n_tokens = encodings.size(1), 0, 0.0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = encodings[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        logits, _ = model(input_ids)
        logits = logits[..., : model.config.vocab_size]
        labels = target_ids[:, 1:]
        nll_sum += F.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(), reduction="sum").item()
        n_tokens += int((labels != -100).sum())
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return nll_sum, n_tokens


@pytest.mark.parametrize("window,stride", [(16, 8), (16, 16 - 1), (9, 4), (32, 1)])
def test_strided_matches_hf_guide_loop(window, stride):
    model, tok = tiny_model(), Tokenizer.default()
    report = evaluate_perplexity(model, tok, TEXTS, "strided", window, stride, progress=False)
    stream, _ = pack_with_positions(tok.encode_batch(TEXTS, bos=False), tok.bos_id, tok.eos_id)
    nll, n = hf_guide_nll(model, torch.tensor([stream]), window, stride)
    assert report["tokens"] == n == len(stream) - 1
    assert -report["loglikelihood"] == pytest.approx(nll, rel=1e-6)


def brute_force_logprobs(model, tok, window: int) -> list[float]:
    """Every target's log-probability, in scoring order, from one forward pass of exactly its lm-eval context."""
    logprobs = []
    for tokens in tok.encode_batch(TEXTS, bos=False):
        for context, preds in lm_eval_rolling_windows(tokens, tok.bos_id, window):
            for k in range(len(preds)):  # the prediction of preds[k] sits at input index len(context)-len(preds)+k
                cut = len(context) - len(preds) + k + 1
                logprobs.append(logprob_of_next(model, context[:cut], preds[k]))
    return logprobs


def test_rolling_matches_per_token_brute_force():
    model, tok = tiny_model(max_seq_len=8), Tokenizer.default()
    report = evaluate_perplexity(model, tok, TEXTS, "rolling", window=8, bucket_size=4, progress=False)
    by_position = {}
    for tokens in tok.encode_batch(TEXTS, bos=False):
        for i in range(len(tokens)):  # token i of a document has position i
            by_position[i // 4] = by_position.get(i // 4, 0) + 1
    assert report["loglikelihood"] == pytest.approx(sum(brute_force_logprobs(model, tok, 8)), rel=1e-6)
    assert {b["start"] // 4: b["tokens"] for b in report["by_position"]["buckets"]} == by_position


def test_standard_error_is_batch_means_of_the_scored_tokens():
    model, tok = tiny_model(max_seq_len=8), Tokenizer.default()
    report = evaluate_perplexity(model, tok, TEXTS, "rolling", window=8, progress=False, se_batch_tokens=5)
    nlls = [-lp for lp in brute_force_logprobs(model, tok, 8)]
    n_batches = len(nlls) // 5
    means = [sum(nlls[5 * i : 5 * i + 5]) / 5 for i in range(n_batches)]
    assert report["nll_batch_means"] == pytest.approx(means, rel=1e-5)
    assert report["nll_standard_error"] == pytest.approx(statistics.stdev(means) / math.sqrt(n_batches), rel=1e-5)
    low, high = report["token_perplexity_interval95"]
    assert low < report["token_perplexity"] < high
    one_batch = evaluate_perplexity(model, tok, TEXTS, window=8, progress=False, se_batch_tokens=len(nlls) // 2 + 1)
    assert one_batch["nll_standard_error"] is None and one_batch["token_perplexity_interval95"] is None
    with pytest.raises(ValueError, match="se_batch_tokens=0"):
        evaluate_perplexity(model, tok, TEXTS, window=8, progress=False, se_batch_tokens=0)


def test_uniform_logits_give_vocab_size_perplexity():
    """Padded logits are excluded: uniform logits over 8200 real ids give perplexity 8200, whatever the padding."""
    tok, model = Tokenizer.default(), UniformModel(vocab_size=8200)
    assert model.config.padded_vocab_size == 8256  # 56 padded ids
    for protocol in ("rolling", "strided"):
        report = evaluate_perplexity(model, tok, TEXTS, protocol, window=16, progress=False)
        assert report["token_perplexity"] == pytest.approx(8200.0)
        assert report["bits_per_byte"] == pytest.approx(report["tokens"] * math.log2(8200) / report["bytes"])
        assert report["word_perplexity"] == pytest.approx(8200.0 ** (report["tokens"] / report["words"]))
        assert all(b["perplexity"] == pytest.approx(8200.0) for b in report["by_position"]["buckets"])


def test_positions_are_document_offsets():
    stream, positions = pack_with_positions([[7, 8, 9], [5]], bos=1, eos=2)
    assert stream == [1, 7, 8, 9, 2, 1, 5, 2]
    assert positions.tolist() == [0, 0, 1, 2, 3, 0, 0, 1]  # target positions: text token i -> i, eos -> len(doc)


# -- recurrent state ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make_windows", [lambda n: strided_windows(n, 6, 2), lambda n: rolling_windows(n, 5)])
def test_carry_reads_every_token_once_in_order(make_windows):
    model = MemoryToy(tiny_model())
    seq = list(range(200, 223))
    windows = make_windows(len(seq))
    scored = score_windows(model, seq, windows, carry=True)
    assert scored.state[0][0].tolist() == seq  # the final state has read the whole sequence exactly once
    # Brute force: window w starts from the memory of everything before it.
    for w in windows:
        for t in range(w.end - w.n_new, w.end):
            expected = logprob_of_next(
                model, seq[w.begin : t + 1], seq[t + 1], [torch.tensor([seq[: w.begin]])] if w.begin else None
            )
            assert scored.logprobs[t].item() == pytest.approx(expected, abs=1e-5)
    reset = score_windows(model, seq, windows, carry=False)
    assert reset.state is None and not torch.allclose(reset.logprobs, scored.logprobs)


def test_state_modes_for_documents():
    tok, model = Tokenizer.default(), MemoryToy(tiny_model(max_seq_len=16))
    runs = {
        s: evaluate_perplexity(model, tok, TEXTS, "rolling", 16, state=s, progress=False)["loglikelihood"]
        for s in ("reset", "document", "carry")
    }
    assert len({round(v, 6) for v in runs.values()}) == 3  # memory within and across documents changes scores
    with pytest.raises(ValueError, match="rolling"):
        evaluate_perplexity(model, tok, TEXTS, "strided", 16, state="document", progress=False)
    plain = tiny_model(max_seq_len=16)  # Transformer++: no state, the modes agree
    values = [
        evaluate_perplexity(plain, tok, TEXTS, "rolling", 16, state=s, progress=False)["loglikelihood"]
        for s in ("reset", "document", "carry")
    ]
    assert values == pytest.approx([values[0]] * 3)


# -- the command -------------------------------------------------------------------------------------------------
def fit_checkpoint(root, corpus, *extra):
    main(
        [
            "fit",
            "--config",
            str(DEBUG_YAML),
            "--trainer.default_root_dir",
            str(root),
            "--trainer.max_steps",
            "4",
            "--trainer.val_check_interval",
            "4",
            "--trainer.num_sanity_val_steps",
            "0",
            "--trainer.accelerator",
            "cpu",
            "--model.overrides",
            '{"n_layer": 1, "n_embd": 32, "n_head": 2, "intermediate_size": 64, "max_seq_len": 64}',
            "--data.source",
            str(corpus),
            "--data.val_fraction",
            "0.2",
            "--data.seq_len",
            "32",
            "--data.batch_size",
            "4",
            "--data.max_val_blocks",
            "2",
            *extra,
        ]
    )
    return root / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppl")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(20):
        (corpus / f"doc{i:02d}.txt").write_text(f"Document {i}: the quick brown fox jumps over {i} lazy dogs.\n" * 3)
    return fit_checkpoint(root / "run", corpus), corpus


def test_command_writes_json_and_plot(checkpoint, tmp_path, capsys):
    ckpt, corpus = checkpoint
    out = tmp_path / "ppl.json"
    main(
        [
            "eval",
            "perplexity",
            "--checkpoint",
            str(ckpt),
            "--source",
            str(corpus),
            "--max_documents",
            "5",
            "--protocol",
            "strided",
            "--window",
            "32",
            "--stride",
            "16",
            "--bucket_size",
            "8",
            "--out",
            str(out),
            "--progress",
            "false",
        ]
    )
    report = json.loads(out.read_text())
    assert report["documents"] == 5 and report["split"] == "all" and report["protocol"] == "strided"
    assert report["tokenizer"].endswith("default_tokenizer.model")
    assert {"token_perplexity", "bits_per_byte", "word_perplexity", "byte_perplexity", "by_position"} <= set(report)
    assert sum(b["tokens"] for b in report["by_position"]["buckets"]) == report["tokens"]
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "token perplexity" in capsys.readouterr().out


def test_command_on_default_validation_split(checkpoint, tmp_path):
    ckpt, _ = checkpoint
    out = tmp_path / "ppl.json"
    main(
        [
            "eval",
            "perplexity",
            "--checkpoint",
            str(ckpt),
            "--max_documents",
            "1",
            "--state",
            "carry",
            "--out",
            str(out),
            "--progress",
            "false",
        ]
    )
    report = json.loads(out.read_text())
    assert report["split"] == "val" and report["documents"] == 1 and report["window"] == 64


def test_tokenizer_from_config_and_safetensors(checkpoint, tmp_path):
    """A .safetensors with model_config.yaml loads; a tokenizer named in config.yaml beside it is used, and a
    missing one is a clear error."""
    from safetensors.torch import save_file

    from hope.checkpoint import load_model
    from hope.evaluation.loading import load_for_eval

    ckpt, _ = checkpoint
    model = load_model(ckpt)
    st = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, st)
    (tmp_path / "model_config.yaml").write_text(yaml.safe_dump(model.config.to_dict()))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"data": {"tokenizer": str(Tokenizer.default().path)}}))
    loaded, tok = load_for_eval(st, device="cpu")
    assert tok.fingerprint == Tokenizer.default().fingerprint
    assert torch.equal(loaded.head.weight, model.head.weight)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"data": {"tokenizer": str(tmp_path / "gone.model")}}))
    with pytest.raises(FileNotFoundError, match="--tokenizer"):
        load_for_eval(st, device="cpu")
