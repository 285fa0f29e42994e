"""`hope eval` on `hope finetune` checkpoints: a trainable-only LoRA checkpoint (adapters merged on load, the frozen
weights read from its base) and a product-key memory-layer checkpoint load through the evaluation loader with the
logits the finetuned model had, and the `hope eval` commands run on them. Missing or corrupt files are clear errors."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from hope.checkpoint import load_checkpoint_file, load_model
from hope.cli import main
from hope.continual.method import EvalContext
from hope.data.documents import load_documents
from hope.evaluation.loading import load_for_eval
from hope.evaluation.perplexity import evaluate_perplexity
from hope.evaluation.retention import SyntheticFacts
from hope.finetune.cli import main as finetune_main
from hope.layers.memory_layer import memory_layers
from hope.tokenizer import Tokenizer
from tests.test_cli import fit_args
from tests.test_finetune_cli import MEMORY, ft_args

RUNS = {
    "lora": [
        "--method",
        "hope.continual.methods.LoRA",
        "--method.rank",
        "2",
        "--model.save_weights",
        "trainable",
        "--model.optim.lr",
        "1.0e-2",
    ],
    "memory": ["--model.memory_layers", MEMORY],  # memory-layer.yaml's step: full finetuning with a memory layer
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(20):
        (folder / f"doc{i:02d}.txt").write_text(f"Document {i}: the quick brown fox jumps over {i} lazy dogs.\n" * 3)
    return folder


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, corpus) -> Path:
    root = tmp_path_factory.mktemp("pretrain")
    main(fit_args(root, corpus, steps=3))
    return root / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, corpus, pretrained) -> dict[str, tuple[Path, torch.nn.Module]]:
    """``{run: (last.ckpt, the finetuned model as trained)}``, each run through `hope finetune`'s CLI."""
    runs = {}
    for name, extra in RUNS.items():
        root = tmp_path_factory.mktemp(name)
        cli = finetune_main(ft_args(root, corpus, pretrained, *extra), run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        runs[name] = (root / "checkpoints" / "last.ckpt", cli.model.model.eval())
    return runs


def logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens)[0]


@pytest.mark.parametrize("name", list(RUNS))
def test_loader_gives_the_finetuned_models_logits(name, finetuned, pretrained):
    ckpt, original = finetuned[name]
    if name == "lora":  # only the adapters are stored: everything else must come from the base
        assert all(".lora_" in k for k in load_checkpoint_file(ckpt)["state_dict"])
    loaded, tok = load_for_eval(ckpt, device="cpu")
    tokens = torch.randint(tok.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    want = logits(original, tokens)
    torch.testing.assert_close(logits(loaded, tokens), want, rtol=1e-4, atol=1e-5)  # LoRA: merged, not exact
    assert not torch.allclose(logits(load_model(pretrained), tokens), want, atol=1e-3)  # the finetune changed them
    if name == "lora":
        assert not any(".lora_" in k for k in loaded.state_dict())
    else:
        assert [n for n, _ in memory_layers(loaded)] == ["blocks.1.mlp"]


def test_perplexity_command_on_a_lora_checkpoint(finetuned, corpus, tmp_path):
    ckpt, original = finetuned["lora"]
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
            "3",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--progress",
            "false",
        ]
    )
    report = json.loads(out.read_text())
    texts = [text for _, text in load_documents(str(corpus), "all", max_documents=3)]
    want = evaluate_perplexity(original, Tokenizer.default(), texts, progress=False)
    assert report["documents"] == 3
    assert report["token_perplexity"] == pytest.approx(want["token_perplexity"], rel=1e-5)


def test_retention_command_on_a_memory_layer_checkpoint(finetuned, corpus, tmp_path):
    """Sparse Memory Finetuning in the harness needs the memory layer the checkpoint carries."""
    ckpt, original = finetuned["memory"]
    out = tmp_path / "facts"
    main(
        [
            "eval",
            "retention",
            "--checkpoint",
            str(ckpt),
            "--suite.n_tasks",
            "1",
            "--suite.people_per_task",
            "1",
            "--method",
            "hope.continual.methods.SparseMemoryFinetune",
            "--method.top_t",
            "4",
            "--method.background_source",
            str(corpus),
            "--method.background_batches",
            "2",
            "--method.background_batch_size",
            "2",
            "--method.loop.lr",
            "1.0",
            "--method.loop.epochs",
            "1",
            "--method.loop.seq_len",
            "32",
            "--general_tokens",
            "0",
            "--device",
            "cpu",
            "--out_dir",
            str(out),
            "--progress",
            "false",
        ]
    )
    report = json.loads((out / "retention.json").read_text())
    tasks = SyntheticFacts(n_tasks=1, people_per_task=1).tasks()
    assert report["initial"] == [t.test.evaluate(original, Tokenizer.default(), EvalContext()) for t in tasks]
    assert report["learn_stats"][0]["trained_slots"] > 0


def test_missing_corrupt_or_baseless_checkpoints_are_clear_errors(finetuned, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_for_eval(tmp_path / "nope.ckpt", device="cpu")
    ckpt, _ = finetuned["lora"]
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_for_eval(truncated, device="cpu")
    moved = load_checkpoint_file(ckpt)
    moved["finetune"]["init_from"] = str(tmp_path / "gone" / "last.ckpt")
    torch.save(moved, tmp_path / "moved.ckpt")
    shutil.copy(ckpt.with_name("config.yaml"), tmp_path / "config.yaml")
    with pytest.raises(FileNotFoundError, match=r"trainable weights only.*base .*gone.*does not exist"):
        load_for_eval(tmp_path / "moved.ckpt", device="cpu")
