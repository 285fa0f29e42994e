"""Compose: pieces combine through the same hooks (LoRA + LLRD, LoRA + replay, LoRA + EWC, ...), a composition of one
part is that method, and conflicting combinations are errors that name the parts."""

import pytest
import torch

from hope.continual.finetune import step_loss
from hope.continual.method import Task
from hope.continual.methods import EWC, CMSLevels, Compose, FullFinetune, GradualUnfreezing, InContext, TaskLoop
from hope.continual.methods.llrd import LayerwiseLRDecay
from hope.continual.methods.lora import LoRA
from hope.continual.methods.replay import Replay
from hope.continual.methods.sparse_memory import SparseMemoryFinetune
from hope.continual.params import configure_trainable, param_groups
from hope.evaluation.retention import SyntheticFacts, run_retention
from hope.layers.memory_layer import MemoryLayerConfig, swap_mlp_for_memory
from hope.tokenizer import Tokenizer
from tests.test_finetune_params import changed, random_batch, snapshot, tiny_model, train_steps
from tests.test_methods_layers import tiny_hope

LOOP = TaskLoop(epochs=2, batch_size=4, seq_len=32)
TEXTS = ["Ada Quill was born in Port Mere in 1911.", "Ada Quill works as a glassblower in Lowmarsh."] * 4


def prepared(method, model=None):
    model = model if model is not None else tiny_model(n_layer=3)
    method.prepare(model)
    configure_trainable(model, method.trains)
    return model


def adapters(model) -> set[str]:
    return {n for n, _ in model.named_parameters() if ".lora_" in n}


def test_lora_with_llrd_decays_the_adapters_lr_by_layer_and_keeps_the_base_bit_identical():
    method = Compose([LoRA(rank=2), LayerwiseLRDecay(decay=0.5)])
    model = prepared(method)
    groups = param_groups(model, 1.0, 0.0, method.lr_scales(model))
    lr_of = {name: g["lr"] for g in groups for name in g["names"]}
    assert set(lr_of) == adapters(model)  # only the adapters are in the optimizer
    for layer in range(3):  # block l is depth l + 1 of n_layer + 1 = 4: lr · 0.5 ** (3 - l)
        for name in (f"blocks.{layer}.attn.qkv.lora_a", f"blocks.{layer}.mlp.up.lora_b"):
            assert lr_of[name] == 0.5 ** (3 - layer)
    before = snapshot(model)
    train_steps(method, model, steps=3)
    assert changed(model, before) == adapters(model)  # every adapter moved (B moves at step 0, A after)


def test_lora_with_replay_trains_on_replayed_rows_in_the_same_loop():
    method, tok = Compose([LoRA(rank=2), Replay(buffer_ratio=0.5)], loop=LOOP), Tokenizer.default()
    model = tiny_model()
    method.setup(model, tok)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_" not in n}
    first = method.learn(model, Task("first", TEXTS, None), tok)
    assert first["replayed_buffer_share"] == 0  # nothing to replay during the first task
    buffer_rows = {tuple(row.tolist()) for row in method.parts[1]._buffer[0]}
    batch = {"input_ids": torch.zeros(4, 32, dtype=torch.long), "labels": torch.zeros(4, 32, dtype=torch.long)}
    mixed = method.mix_batch(batch, step=0)  # what the loop trains on: the task's rows, then the buffer's
    assert len(mixed["input_ids"]) == 8 and torch.equal(mixed["input_ids"][:4], batch["input_ids"])
    assert all(tuple(row.tolist()) in buffer_rows for row in mixed["input_ids"][4:])
    second = method.learn(model, Task("second", ["Bo Lind repairs clocks in Vell."] * 8, None), tok)
    assert second["replayed_buffer_share"] > 0
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)


def test_lora_with_ewc_adds_the_penalty_on_the_adapters_to_the_task_loss():
    method = Compose([LoRA(rank=2), EWC(lam=10.0, fisher_blocks=4)])
    model = prepared(method)
    train_steps(method, model, steps=1)  # B != 0, so A has a Fisher too
    blocks = random_batch(1, batch_size=4)
    method.end_task(model, blocks["input_ids"], blocks["labels"])
    ewc = method.parts[1]
    assert set(ewc._fisher) == adapters(model) and all(f.sum() > 0 for f in ewc._fisher.values())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.add_(0.01 * torch.randn_like(p))
    batch = random_batch(2)
    loss, lm_loss, penalty = step_loss(method, model, batch)
    params = dict(model.named_parameters())
    expected = 5.0 * sum((ewc._fisher[n] * (params[n] - ewc._anchor[n]) ** 2).sum() for n in ewc._fisher)
    assert penalty > 0 and torch.allclose(penalty, expected) and torch.allclose(loss, lm_loss + expected)


def test_gradual_unfreezing_with_lora_thaws_the_adapters_from_the_top():
    method = Compose([LoRA(rank=2), GradualUnfreezing(unfreeze_every=2)])
    model = prepared(method, tiny_model())
    before = snapshot(model)
    train_steps(method, model, steps=4)  # steps 0-1: depth 3 (no adapter there), steps 2-3: block 1's too
    assert changed(model, before) == {n for n in adapters(model) if n.startswith("blocks.1.")}


def test_lora_on_cms_levels_trains_the_adapters_of_the_chosen_level_only():
    method = Compose([LoRA(rank=2, targets=["blocks.*.cms.levels.0.*"]), CMSLevels(levels=[0])])
    model = prepared(method, tiny_hope())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in adapters(model) if ".cms.levels.0." in n} and trainable


def test_a_composition_of_one_part_is_that_method():
    tok, task = Tokenizer.default(), Task("t", TEXTS, None)
    models = []
    for method in (LoRA(rank=2, loop=LOOP), Compose([LoRA(rank=2)], loop=LOOP)):
        model = tiny_model()
        method.setup(model, tok)
        method.learn(model, task, tok)
        models.append(dict(model.named_parameters()))
    assert all(torch.equal(p, models[1][n]) for n, p in models[0].items())


def test_state_round_trips_through_the_parts():
    method = Compose([EWC(fisher_blocks=2), Replay(buffer_ratio=0.5)])
    model = prepared(method, tiny_model())
    blocks = random_batch(0, batch_size=4, seq_len=8)
    method.end_task(model, blocks["input_ids"], blocks["labels"])
    method._tasks_learned += 1
    method.mix_batch(random_batch(1, seq_len=8), 0)
    restored = Compose([EWC(fisher_blocks=2), Replay(buffer_ratio=0.5)])
    restored.load_state_dict(method.state_dict())
    assert restored._tasks_learned == restored.parts[1]._tasks_learned == 1
    assert torch.equal(restored.parts[1]._buffer[0], method.parts[1]._buffer[0])
    assert restored.parts[0]._fisher.keys() == method.parts[0]._fisher.keys()
    assert restored.mix_batch(random_batch(2, seq_len=8), 1)["input_ids"].equal(
        method.mix_batch(random_batch(2, seq_len=8), 1)["input_ids"]
    )


def test_lora_replay_llrd_runs_in_the_retention_harness():
    method = Compose([LoRA(rank=2), Replay(buffer_ratio=0.25), LayerwiseLRDecay(decay=0.5)], loop=LOOP)
    model = tiny_model()
    before = snapshot(model)
    suite = SyntheticFacts(n_tasks=2, people_per_task=1, paraphrases=1, n_candidates=2)
    report = run_retention(model, Tokenizer.default(), suite, method, progress=False)
    assert report["method"]["name"] == "lora+replay+llrd" and len(report["matrix"]) == 2
    assert [p["class_path"].rpartition(".")[2] for p in report["method"]["config"]["parts"]] == [
        "LoRA",
        "Replay",
        "LayerwiseLRDecay",
    ]
    assert report["learn_stats"][1]["replayed_buffer_share"] > 0
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)


class OtherReplay(Replay):
    """A user's own replay: a second part that mixes batches."""


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        (lambda: [], "Compose needs parts"),
        (lambda: [Replay(), Replay(buffer_ratio=0.1)], "lists Replay twice"),
        (lambda: [Replay(), OtherReplay()], "Replay and OtherReplay both mix batches"),
        (lambda: [FullFinetune(), LoRA()], "FullFinetune adds nothing"),
        (lambda: [InContext(), LoRA()], "InContext is not a finetuning piece"),
        (lambda: [LoRA(loop=TaskLoop(lr=0.1))], "LoRA sets its own loop"),
    ],
)
def test_conflicting_parts_are_errors_that_name_them(parts, message):
    with pytest.raises(ValueError, match=message):
        Compose(parts())


def test_lora_with_sparse_memory_trains_nothing_and_says_so():
    model = tiny_model()
    swap_mlp_for_memory(model, MemoryLayerConfig(blocks=[1], n_keys=8, heads=2, k=4, key_dim=8))
    with pytest.raises(ValueError, match="LoRA and SparseMemoryFinetune select parameters with none in common"):
        Compose([LoRA(rank=2), SparseMemoryFinetune(top_t=4)]).prepare(model)
