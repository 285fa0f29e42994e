"""`hope eval perplexity --ttl/--dynamic` and `hope eval recall --ttl/--dynamic` end to end: the flags, the reports,
learning that changes the scores (and a zero step that does not), and the errors."""

import json
import math

import pytest
import torch
import yaml

from hope.cli import main
from hope.config import ModelConfig
from hope.dynamic import DynamicConfig
from hope.evaluation.cli import bare_flags
from hope.evaluation.recall import Reading, evaluate_recall
from hope.model import HopeLM
from hope.online import TTLConfig
from hope.tokenizer import Tokenizer

HOPE = dict(
    family="hope",
    hope_chunk_size=4,
    hope_memory_chunk_size=8,
    cms_levels=[{"hidden": 32, "tokens_per_update": 8}, {"hidden": 32, "tokens_per_update": 16}],
)


def tiny(family: str = "hope") -> HopeLM:
    torch.manual_seed(0)
    extra = HOPE if family == "hope" else {}
    return HopeLM(ModelConfig(n_layer=1, n_head=2, n_embd=32, intermediate_size=64, max_seq_len=32, **extra)).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoints of a tiny HOPE and a tiny Transformer++ (.safetensors + model_config.yaml), and a corpus."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("learning")
    for family in ("hope", "transformer"):
        folder = root / family
        folder.mkdir()
        model = tiny(family)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
        (folder / "model_config.yaml").write_text(yaml.safe_dump(model.config.to_dict()))
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(2):
        (corpus / f"{i}.txt").write_text(f"Document {i}: the quick brown fox jumps over the lazy dog.\n" * 3)
    return root, corpus


def perplexity(files, family: str, *flags: str) -> dict:
    root, corpus = files
    out = root / "ppl.json"
    ckpt = root / family / "model.safetensors"
    main(["eval", "perplexity", "--checkpoint", str(ckpt), "--source", str(corpus), "--out", str(out), *flags])
    return json.loads(out.read_text())


def test_perplexity_with_test_time_learning(files):
    common = ["--state", "document", "--progress", "false"]
    plain = perplexity(files, "hope", *common)
    learned = perplexity(files, "hope", "--ttl", *common, "--ttl.inner_lr", "0.3")  # a bare --ttl, then a field
    zero = perplexity(files, "hope", *common, "--ttl.inner_lr", "0")
    assert plain["ttl"] is None and learned["ttl"] == {**vars(TTLConfig()), "inner_lr": 0.3}
    assert learned["token_perplexity"] < 0.99 * plain["token_perplexity"]  # the repeated lines get likelier
    assert zero["loglikelihood"] == pytest.approx(plain["loglikelihood"], rel=1e-6)
    consolidated = perplexity(files, "hope", *common, "--ttl.inner_lr", "0.3", "--ttl.consolidate", "true")
    assert consolidated["token_perplexity"] != learned["token_perplexity"]  # later documents read earlier ones


def test_capped_test_time_learning_stays_finite(files):
    """--ttl.max_step caps every in-context step (cms_max_step): an absurd step size still gives a finite score."""
    common = ["--state", "document", "--progress", "false", "--ttl.inner_lr", "1e6"]
    capped = perplexity(files, "hope", *common, "--ttl.max_step", "0.01")
    assert capped["ttl"]["max_step"] == 0.01 and math.isfinite(capped["loglikelihood"])
    with pytest.raises(ValueError, match="max_step=0.0 must be > 0"):
        perplexity(files, "hope", *common, "--ttl.max_step", "0")


def test_perplexity_with_dynamic_evaluation(files):
    common = ["--state", "carry", "--progress", "false"]
    plain = perplexity(files, "transformer", *common)
    learned = perplexity(files, "transformer", *common, "--dynamic.lr", "3e-3", "--dynamic.segment", "8")
    assert learned["dynamic"] == {**vars(DynamicConfig()), "lr": 3e-3, "segment": 8} and learned["ttl"] is None
    assert learned["token_perplexity"] < 0.99 * plain["token_perplexity"]


def test_perplexity_learning_errors(files):
    with pytest.raises(ValueError, match="family='transformer' has no CMS levels.*dynamic"):
        perplexity(files, "transformer", "--ttl", "--progress", "false")
    with pytest.raises(ValueError, match="each document's end"):
        perplexity(files, "hope", "--ttl.consolidate", "true", "--progress", "false")  # --state reset
    with pytest.raises(ValueError, match="not both"):
        perplexity(files, "hope", "--ttl", "--dynamic", "--progress", "false")


def test_diverged_learning_stops_the_command(files):
    """A step far too large makes the scores NaN/inf: the command exits non-zero and says why, report kept."""
    flags = ["--state", "carry", "--progress", "false", "--dynamic.lr", "1e30", "--dynamic.rule", "sgd"]
    with pytest.raises(SystemExit, match="log-likelihood is (nan|-?inf).*lower its step.*report was written"):
        perplexity(files, "transformer", *flags)
    assert not math.isfinite(json.loads((files[0] / "ppl.json").read_text())["loglikelihood"])


def test_bare_flags():
    assert bare_flags(["perplexity", "--ttl"]) == ["perplexity", "--ttl", "{}"]
    assert bare_flags(["--ttl", "--state", "carry"]) == ["--ttl", "{}", "--state", "carry"]
    assert bare_flags(["--dynamic", "{}", "--ttl.inner_lr", "1"]) == ["--dynamic", "{}", "--ttl.inner_lr", "1"]


def test_recall_learns_each_prompt_afresh():
    model = HopeLM(ModelConfig(n_layer=1, n_head=2, n_embd=32, intermediate_size=64, max_seq_len=48, **HOPE)).eval()
    tok = Tokenizer.default()
    args = (["passkey"], [96], [0.5], 1, "generated", [], 1)  # 96 tokens: two windows of 48

    def run(**learning) -> dict:
        return evaluate_recall(model, tok, *args, Reading(progress=False, **learning))

    plain, zero, learned = run(), run(ttl=TTLConfig(inner_lr=0.0)), run(ttl=TTLConfig(inner_lr=0.5))
    dynamic = run(dynamic=DynamicConfig(lr=1e-2, segment=8))
    logprob = lambda r: r["needle"]["by_kind"]["passkey"]["96"]["answer_logprob"]  # noqa: E731
    assert logprob(zero) == pytest.approx(logprob(plain), rel=1e-6)
    assert logprob(learned) != pytest.approx(logprob(plain), rel=1e-3)
    assert logprob(dynamic) != pytest.approx(logprob(plain), rel=1e-3)
    assert learned["ttl"]["inner_lr"] == 0.5 and dynamic["dynamic"]["lr"] == 1e-2 and plain["ttl"] is None
    with pytest.raises(ValueError, match="consolidate"):
        run(ttl=TTLConfig(consolidate=True))


def test_recall_command_takes_the_flags(files, tmp_path):
    root, _ = files
    main(
        ["eval", "recall", "--checkpoint", str(root / "hope" / "model.safetensors"), "--kinds", "[passkey]",
         "--lengths", "[80]", "--depths", "[0.5]", "--samples", "1", "--hay", "generated", "--pairs", "[]",
         "--out_dir", str(tmp_path), "--progress", "false", "--ttl.inner_lr", "0.1"]
    )  # fmt: skip
    report = json.loads((tmp_path / "recall.json").read_text())
    assert report["ttl"]["inner_lr"] == 0.1 and "passkey" in report["needle"]["by_kind"]
