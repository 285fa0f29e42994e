"""`hope finetune` end to end through the real LightningCLI: every method from a tiny pretrained checkpoint,
freezing, trainable-only checkpoints, loading a finetuned model, and exact resume."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from hope.checkpoint import load_checkpoint_file, load_finetuned, load_model
from hope.cli import main
from hope.finetune.cli import main as finetune_main
from hope.finetune.module import FinetuneLitModule
from tests.test_cli import Recorder, fit_args

FULL_YAML = str(Path(__file__).parents[1] / "configs" / "finetune" / "full.yaml")
TINY = '{"n_layer": 2, "n_embd": 64, "n_head": 2, "intermediate_size": 128}'
MEMORY = '{"blocks": [1], "n_keys": 8, "heads": 2, "k": 4, "key_dim": 16}'
TINY_HOPE = (  # hope-debug's level periods, narrower levels
    '{"n_layer": 2, "n_embd": 64, "n_head": 2, "cms_levels": [{"hidden": 64, "tokens_per_update": 16, '
    '"steps_per_update": 1}, {"hidden": 64, "tokens_per_update": 64, "steps_per_update": 2}, '
    '{"hidden": 64, "tokens_per_update": 256, "steps_per_update": 4}]}'
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The conftest ``text_corpus``, once per module."""
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(40):
        lines = [f"Document {i}, line {j}: the quick brown fox jumps over {i * j} lazy dogs." for j in range(4)]
        (folder / f"doc{i:02d}.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, corpus) -> Path:
    root = tmp_path_factory.mktemp("pretrain")
    main(fit_args(root, corpus, steps=3))
    return root / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def hope_pretrained(tmp_path_factory, corpus) -> Path:
    root = tmp_path_factory.mktemp("pretrain-hope")
    main(fit_args(root, corpus, "--model.preset", "hope-debug", "--model.overrides", TINY_HOPE, steps=3))
    return root / "checkpoints" / "last.ckpt"


def ft_args(root: Path, corpus: Path, init: Path, *extra: str, steps: int = 2) -> list[str]:
    return [
        "fit",
        "--config",
        FULL_YAML,
        "--trainer.default_root_dir",
        str(root),
        "--trainer.max_steps",
        str(steps),
        "--trainer.val_check_interval",
        str(steps),
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.log_every_n_steps",
        "1",
        "--checkpoint.every_n_train_steps",
        "2",
        "--model.overrides",
        TINY,
        "--model.optim.warmup_steps",
        "1",
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
        "--model.init_from",
        str(init),
        *extra,
    ]


METHODS = {
    "full": ["--model.freeze", '["embed.*"]', "--model.group_lr", '{"head.*": 1.0e-2}'],
    "lora": ["--method", "hope.continual.methods.LoRA", "--method.rank", "2", "--model.save_weights", "trainable"],
    "ewc": [
        "--method",
        "hope.continual.methods.EWC",
        "--method.fisher_source",
        "{corpus}",
        "--method.fisher_blocks",
        "2",
    ],
    "replay": [
        "--method",
        "hope.continual.methods.Replay",
        "--method.buffer_ratio",
        "0.25",
        "--method.general_ratio",
        "0.25",
        "--method.replay_sources",
        '["{corpus}"]',
        "--method.general_source",
        "{corpus}",
        "--method.general_blocks",
        "4",
        "--method.buffer_size",
        "4",
    ],
    "llrd": ["--method", "hope.continual.methods.LayerwiseLRDecay", "--method.decay", "0.5"],
    "gradual": ["--method", "hope.continual.methods.GradualUnfreezing", "--method.unfreeze_every", "1"],
    "smf": [
        "--model.memory_layers",
        MEMORY,
        "--method",
        "hope.continual.methods.SparseMemoryFinetune",
        "--method.top_t",
        "4",
        "--method.background_source",
        "{corpus}",
        "--method.background_batches",
        "2",
        "--method.background_batch_size",
        "2",
        "--model.optim.lr",
        "2.0",
    ],
    "compose": [
        "--method",
        "hope.continual.methods.Compose",
        "--method.parts",
        '[{"class_path": "LoRA", "init_args": {"rank": 2}}, {"class_path": "EWC", "init_args": {"fisher_source": '
        '"{corpus}", "fisher_blocks": 2}}, "LayerwiseLRDecay"]',
        "--model.save_weights",
        "trainable",
    ],
    "cms": [
        "--model.preset",
        "hope-debug",
        "--model.overrides",
        TINY_HOPE,
        "--method",
        "hope.continual.methods.CMSLevels",
        "--method.levels",
        "[0]",
    ],
}


@pytest.mark.parametrize("name", list(METHODS))
def test_finetune_runs_each_method(name, tmp_path, corpus, request):
    pretrained = request.getfixturevalue("hope_pretrained" if name == "cms" else "pretrained")
    extra = [a.replace("{corpus}", str(corpus)) for a in METHODS[name]]
    main(["finetune", *ft_args(tmp_path, corpus, pretrained, *extra)[1:]])  # `hope finetune` = `hope finetune fit`
    ckpt = load_checkpoint_file(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2 and ckpt["finetune"]["init_from"] == str(pretrained)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    base = load_model(pretrained).state_dict()
    if name == "full":  # frozen by pattern: unchanged; the rest moved
        assert torch.equal(state["embed.weight"], base["embed.weight"])
        assert not torch.equal(state["head.weight"], base["head.weight"])
    if name == "lora":  # adapters only in the checkpoint; the model comes back from them and the base
        assert set(state) == {k for k in state if ".lora_" in k} and len(state) == 20
        model = load_finetuned(tmp_path / "checkpoints" / "last.ckpt")
        assert set(model.state_dict()) == set(base)
        assert not torch.equal(model.state_dict()["blocks.0.attn.qkv.weight"], base["blocks.0.attn.qkv.weight"])
        other = load_checkpoint_file(pretrained)  # adapters must not be applied to other weights without an error
        other["state_dict"]["model.blocks.0.attn.qkv.weight"] += 1
        torch.save(other, tmp_path / "other.ckpt")
        with pytest.raises(ValueError, match="frozen weights .* differ"):
            load_finetuned(tmp_path / "checkpoints" / "last.ckpt", base=tmp_path / "other.ckpt")
    if name == "ewc":
        assert set(ckpt["finetune"]["method_state"]["fisher"]) == set(base)
    if name == "replay":
        assert ckpt["finetune"]["method_state"]["replayed"] == {"buffer": 4, "general": 4}  # 8 task rows: 1/4 each
    if name == "smf":  # every pretrained weight untouched (block 1's MLP became a memory); the background stored
        assert state["blocks.1.mlp.background_batches"] == 2 and "blocks.1.mlp.values.weight" in state
        assert all(torch.equal(state[k], v) for k, v in base.items() if not k.startswith("blocks.1.mlp."))
    if name == "compose":  # LoRA + EWC + LLRD: EWC's Fisher over the adapters; the model loads back through LoRA's
        assert set(state) == {k for k in state if ".lora_" in k} and len(state) == 20
        assert set(ckpt["finetune"]["method_state"]["parts"][1]["fisher"]) == set(state)
        assert ckpt["finetune"]["structure"]["lora"]["rank"] == 2
        lrs = sorted({g["lr"] for g in ckpt["optimizer_states"][0]["param_groups"]}, reverse=True)
        assert len(lrs) == 2 and lrs[1] < lrs[0]  # two blocks, two decayed lrs
        assert set(load_finetuned(tmp_path / "checkpoints" / "last.ckpt").state_dict()) == set(base)
    if name == "cms":  # only level 0 of the CMS moved, under the LevelOptimizer (period 1 for level 0)
        moved = {k for k, v in base.items() if not torch.equal(state[k], v)}
        assert moved and all(".cms.levels.0." in k for k in moved)
        assert {g["level"] for g in ckpt["optimizer_states"][0]["param_groups"]} == {"level1"}


def fit_recording(args: list[str], ckpt_path: str | None = None) -> dict:
    cli = finetune_main(args, run=False)
    recorder = Recorder()
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    return recorder.steps


def test_resume_is_exact_with_method_state_and_trainable_only_checkpoints(tmp_path, corpus, pretrained):
    """EWC (Fisher and anchor in the method state) with frozen layers left out of the checkpoint: resuming from
    step 2 replays steps 3-4 with the same batches and losses."""
    extra = [
        "--method",
        "hope.continual.methods.EWC",
        "--method.fisher_source",
        str(corpus),
        "--method.fisher_blocks",
        "2",
        "--method.lam",
        "1.0e4",
        "--model.freeze",
        '["embed.*", "head.*"]',
        "--model.save_weights",
        "trainable",
    ]
    full = fit_recording(ft_args(tmp_path / "a", corpus, pretrained, *extra, steps=4))
    saved = load_checkpoint_file(tmp_path / "a" / "checkpoints" / "step000002.ckpt")
    assert "model.embed.weight" not in saved["state_dict"] and "model.blocks.0.attn.qkv.weight" in saved["state_dict"]

    resumed_root = tmp_path / "b" / "checkpoints"
    resumed_root.mkdir(parents=True)
    shutil.copy(tmp_path / "a" / "checkpoints" / "step000002.ckpt", resumed_root / "last.ckpt")
    resumed = fit_recording(ft_args(tmp_path / "b", corpus, pretrained, *extra, steps=4), ckpt_path="last")
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        assert resumed[step] == full[step], f"step {step}: {resumed[step]} != {full[step]}"


def test_ckpt_path_of_a_pretraining_checkpoint_points_to_init_from(pretrained):
    module = FinetuneLitModule(overrides=json.loads(TINY))
    with pytest.raises(ValueError, match="use --model.init_from, not --ckpt_path"):
        module.on_load_checkpoint(load_checkpoint_file(pretrained))
