"""Every method plugs into the retention harness (``run_retention``) as a ``ContinualMethod`` and learns; HOPE keeps
its CMS level periods there."""

import pytest
import torch

from hope.config import ModelConfig
from hope.continual.method import ContinualMethod, Task
from hope.continual.methods import (
    EWC,
    FullFinetune,
    GradualUnfreezing,
    LayerwiseLRDecay,
    LoRA,
    Replay,
    SparseMemoryFinetune,
    TaskLoop,
)
from hope.evaluation.retention import SyntheticFacts, run_retention
from hope.layers.memory_layer import MemoryLayerConfig, swap_mlp_for_memory
from hope.model import HopeLM
from hope.tokenizer import Tokenizer
from tests.test_finetune_params import snapshot, tiny_model

LOOP = TaskLoop(epochs=1, batch_size=4, seq_len=32)
METHODS = {
    "full": lambda: FullFinetune(loop=LOOP),
    "lora": lambda: LoRA(rank=2, loop=LOOP),
    "ewc": lambda: EWC(lam=10.0, fisher_blocks=2, loop=LOOP),
    "replay": lambda source: Replay(
        buffer_ratio=0.25, general_ratio=0.25, general_source=source, general_blocks=4, loop=LOOP
    ),
    "llrd": lambda: LayerwiseLRDecay(decay=0.5, loop=LOOP),
    "gradual": lambda: GradualUnfreezing(unfreeze_every=1, loop=LOOP),
    "smf": lambda source: SparseMemoryFinetune(
        top_t=8,
        background_source=source,
        background_batches=2,
        background_batch_size=2,
        loop=TaskLoop(lr=1.0, epochs=1, seq_len=32),
    ),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_method_runs_in_the_retention_harness(name, text_corpus):
    # general data for replay and SMF's background: the small test corpus (the default one takes seconds to read)
    model = tiny_model()
    method = METHODS[name](str(text_corpus)) if name in ("replay", "smf") else METHODS[name]()
    assert isinstance(method, ContinualMethod)
    if name == "smf":
        swap_mlp_for_memory(model, MemoryLayerConfig(blocks=[1], n_keys=8, heads=2, k=4, key_dim=8))
    before = snapshot(model)
    suite = SyntheticFacts(n_tasks=2, people_per_task=1, paraphrases=1, n_candidates=2)
    report = run_retention(model, Tokenizer.default(), suite, method, progress=False)
    assert len(report["matrix"]) == 2 and report["method"]["name"] == method.name
    stats = report["learn_stats"]
    assert all(s["steps"] >= 1 and s["loss_last"] > 0 for s in stats)
    after = dict(model.named_parameters())
    moved = {n for n, v in before.items() if not after[n].equal(v)}
    if name == "lora":
        assert not moved and any(p.abs().sum() > 0 for n, p in after.items() if n.endswith("lora_b"))
    else:
        assert moved
    if name == "replay":
        assert method._buffer is not None and stats[1]["replayed_buffer_share"] > 0
    if name == "ewc":
        assert method._fisher and stats[1]["penalty"] >= 0


class RecordingFull(FullFinetune):
    """Full finetuning that records the weights before every optimizer step."""

    def __init__(self, loop: TaskLoop) -> None:
        super().__init__(loop)
        self.before_steps: list[dict] = []

    def before_optimizer_step(self, model, step: int) -> None:
        self.before_steps.append(snapshot(model))


def test_harness_finetuning_keeps_cms_level_periods():
    """HOPE in the retention harness: CMS level l steps every cms_level_periods[l] steps of a task, as in `hope
    finetune` (one LevelOptimizer), while the rest steps every step."""
    torch.manual_seed(0)
    model = HopeLM(
        ModelConfig.from_preset(
            "hope-debug",
            n_layer=1,
            n_embd=32,
            n_head=2,
            cms_levels=[
                {"hidden": 32, "tokens_per_update": 16, "steps_per_update": 1},
                {"hidden": 32, "tokens_per_update": 64, "steps_per_update": 4},
                {"hidden": 32, "tokens_per_update": 256, "steps_per_update": 16},
            ],
            max_seq_len=64,
        )
    )
    method, tok = RecordingFull(TaskLoop(epochs=8, batch_size=8, seq_len=32)), Tokenizer.default()
    task = Task("t", ["Ada Quill was born in Port Mere in 1911.", "Ada Quill works as a glassblower."], None)
    method.setup(model, tok)
    assert method.learn(model, task, tok)["steps"] == 8  # one batch per epoch
    weights = [*method.before_steps, snapshot(model)]
    moved = [
        {n for n, v in after.items() if not v.equal(before[n])}
        for before, after in zip(weights[:-1], weights[1:], strict=True)
    ]

    def level(names: set[str], level: int) -> bool:
        return any(f".cms.levels.{level}." in n for n in names)

    assert all(level(m, 0) and "head.weight" in m for m in moved)
    assert [level(m, 1) for m in moved] == [False, False, False, True] * 2
    assert not any(level(m, 2) for m in moved)  # period 16 > 8 steps
