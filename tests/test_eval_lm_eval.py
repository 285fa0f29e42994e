"""The lm-evaluation-harness adapter (skipped when lm-eval is not installed: it is the optional ``lm-eval`` extra).

Its methods give the same numbers as hope's own scorers, and ``lm_eval.simple_evaluate`` runs local tasks of the
three request types offline with ``--model hope``.
"""

import json

import pytest
import torch
import yaml

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from hope.config import ModelConfig  # noqa: E402
from hope.evaluation.lm_eval_adapter import HopeEvalLM  # noqa: E402
from hope.evaluation.perplexity import evaluate_perplexity  # noqa: E402
from hope.evaluation.scoring import continuation_token_scores, summed  # noqa: E402
from hope.model import HopeLM  # noqa: E402

DOCS = ["def add(a, b):\n    return a + b\n", "import os\nprint(os.getcwd())\n" * 4, "class A:\n    pass\n"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("lm_eval")
    torch.manual_seed(0)
    model = HopeLM(ModelConfig(n_layer=1, n_head=2, n_embd=32, intermediate_size=64, max_seq_len=16))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    (folder / "model_config.yaml").write_text(yaml.safe_dump(model.config.to_dict()))
    return folder / "model.safetensors"


def requests(kind, arguments):
    return [Instance(kind, {}, args, i) for i, args in enumerate(arguments)]


def test_registered_under_hope():
    from lm_eval.api.registry import get_model

    assert get_model("hope") is HopeEvalLM


def test_methods_match_hope_scorers(checkpoint):
    lm = HopeEvalLM(checkpoint=str(checkpoint), device="cuda:0" if torch.cuda.is_available() else "cuda")
    rolling = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(d,) for d in DOCS]), disable_tqdm=True)
    report = evaluate_perplexity(lm.model, lm.hope_tokenizer, DOCS, "rolling", window=16, progress=False)
    assert sum(rolling) == pytest.approx(report["loglikelihood"], rel=1e-6)  # windows of 16 < documents: rolling

    pairs = [("def add(a, b):", " return"), ("def add(a, b):", " banana"), ("", "import os")]
    scores = lm.loglikelihood(requests("loglikelihood", pairs), disable_tqdm=True)
    tok = lm.hope_tokenizer
    for (context, continuation), (ll, greedy) in zip(pairs[:2], scores[:2], strict=True):
        ctx = [tok.bos_id] + tok.encode(context, bos=False)
        cont = tok.encode(context + continuation, bos=False)[len(ctx) - 1 :]
        assert (ll, greedy) == pytest.approx(summed(continuation_token_scores(lm.model, ctx, [cont]))[0])
    assert scores[2][0] < 0  # an empty context is conditioned on BOS

    out = lm.generate_until(
        requests("generate_until", [("x =", {"until": ["\n"], "max_gen_toks": 5})]), disable_tqdm=True
    )
    assert len(out) == 1 and "\n" not in out[0] and len(tok.encode(out[0], bos=False)) <= 5


def test_learning_while_reading_matches_hope_eval_perplexity(checkpoint):
    """dynamic=... / ttl=... model args: rolling log-likelihoods learn along each document, as `hope eval
    perplexity --state document --dynamic ...` does; test-time learning on a Transformer++ is a clear error."""
    from hope.dynamic import DynamicConfig

    lm = HopeEvalLM(checkpoint=str(checkpoint), device="cpu", dynamic_lr=3e-3, dynamic_segment=4)
    rolling = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(d,) for d in DOCS]), disable_tqdm=True)
    learned = evaluate_perplexity(
        lm.model, lm.hope_tokenizer, DOCS, "rolling", 16, state="document", progress=False,
        dynamic=DynamicConfig(lr=3e-3, segment=4),
    )  # fmt: skip
    plain = evaluate_perplexity(lm.model, lm.hope_tokenizer, DOCS, "rolling", 16, state="document", progress=False)
    assert sum(rolling) == pytest.approx(learned["loglikelihood"], rel=1e-6)
    assert learned["loglikelihood"] != pytest.approx(plain["loglikelihood"], rel=1e-4)
    with pytest.raises(ValueError, match="no CMS levels"):
        HopeEvalLM(checkpoint=str(checkpoint), device="cpu", ttl=True)


def test_simple_evaluate_with_local_tasks(checkpoint, tmp_path):
    """lm-eval end to end, offline: a rolling-perplexity, a multiple-choice and a generation task."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    data = tmp_path / "docs.jsonl"
    data.write_text(
        "".join(json.dumps({"text": d, "q": d[:8], "choices": [d[8:12], "zzz"], "label": 0}) + "\n" for d in DOCS)
    )
    common = {"dataset_path": "json", "dataset_kwargs": {"data_files": str(data)}, "test_split": "train"}
    tasks = {
        "hope_ppl": {
            "output_type": "loglikelihood_rolling",
            "doc_to_text": "",
            "doc_to_target": "{{text}}",
            "metric_list": [{"metric": "word_perplexity"}, {"metric": "bits_per_byte"}],
        },
        "hope_mc": {
            "output_type": "multiple_choice",
            "doc_to_text": "{{q}}",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{label}}",
            "metric_list": [{"metric": "acc"}],
        },
        "hope_gen": {
            "output_type": "generate_until",
            "doc_to_text": "{{q}}",
            "doc_to_target": "{{choices[0]}}",
            "generation_kwargs": {"until": ["\n"], "max_gen_toks": 4},
            "metric_list": [{"metric": "exact_match"}],
        },
    }
    for name, spec in tasks.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"task": name, **common, **spec}))
    results = lm_eval.simple_evaluate(
        model="hope",
        model_args=f"checkpoint={checkpoint},device=cpu",
        tasks=list(tasks),
        task_manager=TaskManager(include_path=str(tmp_path)),
        log_samples=False,
    )["results"]
    lm = HopeEvalLM(checkpoint=str(checkpoint), device="cpu")
    ours = evaluate_perplexity(lm.model, lm.hope_tokenizer, DOCS, "rolling", window=16, progress=False)
    assert results["hope_ppl"]["bits_per_byte,none"] == pytest.approx(ours["bits_per_byte"], rel=1e-6)
    assert results["hope_ppl"]["word_perplexity,none"] == pytest.approx(ours["word_perplexity"], rel=1e-6)
    assert 0 <= results["hope_mc"]["acc,none"] <= 1 and 0 <= results["hope_gen"]["exact_match,none"] <= 1
