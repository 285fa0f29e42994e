"""LocalDomains (your own text as a domain sequence) and the standard errors of the facts suite."""

import json
import math
import statistics

import pytest
import torch

from hope.config import ModelConfig
from hope.continual.method import EvalContext
from hope.continual.methods import InContext
from hope.evaluation.retention import LocalDomains, SyntheticFacts, run_retention
from hope.evaluation.retention.harness import format_summary
from hope.evaluation.retention.tasks import HeldOutPerplexity
from hope.model import HopeLM
from hope.tokenizer import Tokenizer


def write_folder(folder, n: int, word: str):
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"{i:03d}.txt").write_text(f"{word} {i}: " + " ".join(f"{word}{i * j}" for j in range(12)) + "\n")
    return folder


def sides(task) -> tuple[set, set]:
    return set(task.train), set(task.test.texts)


def test_hash_split_is_stable_disjoint_and_follows_the_text(tmp_path):
    a, b = write_folder(tmp_path / "alpha", 30, "alpha"), write_folder(tmp_path / "beta", 30, "beta")
    tasks = LocalDomains([str(a), str(b)], test_fraction=0.3).tasks()
    assert [t.name for t in tasks] == ["alpha", "beta"]
    for task in tasks:
        train, test = sides(task)
        assert train and test and not train & test
        assert 3 <= len(test) <= 18  # about 30% of 30 documents
    # the side of a document depends on its text only: renaming and adding files moves nothing
    (a / "000.txt").rename(a / "zzz.txt")
    write_folder(tmp_path / "alpha" / "more", 5, "gamma")
    again = LocalDomains([str(a)], test_fraction=0.3).tasks()[0]
    assert sides(tasks[0])[1] <= sides(again)[1] and sides(tasks[0])[0] <= sides(again)[0]


def test_pairs_single_files_names_and_budgets(tmp_path):
    train, test = write_folder(tmp_path / "tr", 4, "tr"), write_folder(tmp_path / "te", 2, "te")
    book = tmp_path / "book.txt"
    book.write_text("".join(f"line {i} of the only document of this domain\n" for i in range(400)))
    suite = LocalDomains([[str(train), str(test)], str(book), str(book)], max_file_chars=500, train_tokens=200)
    pair, first, second = suite.tasks()
    assert [t.name for t in (pair, first, second)] == ["tr", "book", "book-2"]
    assert all(t.startswith("tr ") for t in pair.train) and all(t.startswith("te ") for t in pair.test.texts)
    train_side, test_side = sides(first)
    assert all(len(t) <= 500 for t in train_side | test_side) and not train_side & test_side  # cut at line ends
    assert all(t.endswith("\n") for t in test_side)  # (the train side's last piece is cut by the budget)
    assert sum(len(t) for t in first.train) <= 200 * 3.5  # the train budget
    assert json.loads(json.dumps(suite.config()))["paths"][0] == [str(train), str(test)]


def test_jsonl_rows_are_documents(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"body": f"row {i} " * 20}) + "\n" for i in range(20)))
    task = LocalDomains([str(rows)], text_field="body").tasks()[0]
    assert len(task.train) + len(task.test.texts) == 20


def test_bad_paths_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        LocalDomains([str(tmp_path / "missing")]).tasks()
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(ValueError, match="holds no text"):
        LocalDomains([str(tmp_path / "empty.txt")]).tasks()
    (tmp_path / "short.txt").write_text("one line\n")
    with pytest.raises(ValueError, match=r"too short.*\[train, test\] pair"):
        LocalDomains([str(tmp_path / "short.txt")]).tasks()
    with pytest.raises(ValueError, match="one name per path"):
        LocalDomains(["a", "b"], names=["x"])


def test_facts_report_standard_errors():
    torch.manual_seed(0)
    model = HopeLM(ModelConfig(n_layer=1, n_head=2, n_embd=32, intermediate_size=64, max_seq_len=64)).eval()
    suite = SyntheticFacts(n_tasks=2, people_per_task=3, n_candidates=4)
    report = run_retention(model, Tokenizer.default(), suite, InContext(), progress=False)
    n = 3 * 4  # people x relations
    errors = report["standard_errors"]["matrix_with_initial"]
    for row, row_errors in zip(report["matrix_with_initial"], errors, strict=True):
        for p, se in zip(row, row_errors, strict=True):
            assert se == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)))
    final = errors[-1]
    assert report["standard_errors"]["average_accuracy"] == pytest.approx(math.hypot(*final) / 2)
    text = format_summary(report)
    assert f"±{final[0]:.3f}" in text and "binomial standard error" in text


def test_held_out_perplexity_standard_error_is_batch_means_over_chunks():
    """Each 16-token chunk scored alone by a plain forward; the standard error is ppl * (sd of the chunks' mean NLLs
    / sqrt(chunks)), the delta method on batch means (every chunk has 15 predictions here)."""
    torch.manual_seed(0)
    model = HopeLM(ModelConfig(n_layer=1, n_head=2, n_embd=32, intermediate_size=64, max_seq_len=64)).eval()
    tok = Tokenizer.default()
    test = HeldOutPerplexity(["def f(x):\n    return x * 2\n" * 20], max_tokens=16 * 6, chunk=16)
    perplexity = test.evaluate(model, tok, EvalContext())
    stream = test.tokens(tok)
    assert len(stream) == 96
    chunk_means = []
    for start in range(0, 96, 16):
        ids = torch.tensor([stream[start : start + 16]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids)[0][0, :-1, : model.config.vocab_size].double(), -1)
        chunk_means.append(-logp.gather(-1, ids[0, 1:, None]).mean().item())
    assert perplexity == pytest.approx(math.exp(sum(chunk_means) / 6), rel=1e-5)
    assert test.nll_batches(perplexity) == pytest.approx(chunk_means, rel=1e-5)
    se = perplexity * statistics.stdev(chunk_means) / math.sqrt(6)
    assert test.standard_error(perplexity) == pytest.approx(se, rel=1e-4)
    with pytest.raises(KeyError, match="not returned"):
        test.standard_error(perplexity + 1.0)


def test_domain_sequence_reports_standard_errors_of_perplexities(tmp_path):
    a, b = write_folder(tmp_path / "alpha", 30, "alpha"), write_folder(tmp_path / "beta", 30, "beta")
    torch.manual_seed(0)
    model = HopeLM(ModelConfig(n_layer=1, n_head=2, n_embd=32, intermediate_size=64, max_seq_len=64)).eval()
    suite = LocalDomains([str(a), str(b)], test_fraction=0.3, test_tokens=256, chunk=64)
    general = HeldOutPerplexity(["x = 1\n" * 200], max_tokens=256, chunk=64)
    report = run_retention(model, Tokenizer.default(), suite, InContext(), general=general, progress=False)
    errors = report["standard_errors"]["matrix_with_initial"]
    assert all(e is not None and e > 0 for row in errors for e in row)
    assert report["general"]["before_standard_error"] > 0
    assert len(report["general"]["before_nll_batch_means"]) == 4  # 256 tokens in chunks of 64
    batches = report["nll_batch_means"]  # rows: initial, after each task; per task its chunks' mean NLLs
    assert [len(row) for row in batches] == [2, 2, 2] and all(len(task) == 4 for row in batches for task in row)
    for row, row_batches in zip(report["matrix_with_initial"], batches, strict=True):
        assert [math.exp(sum(b) / len(b)) for b in row_batches] == pytest.approx(row, rel=1e-5)
    assert "± standard error" in format_summary(report)
