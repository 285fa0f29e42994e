"""Every method plugs into the retention harness (``run_retention``) as a ``ContinualMethod`` and learns."""

import pytest

from hope.evaluation.retention import ContinualMethod, SyntheticFacts, run_retention
from hope.finetune.methods import (
    EWC,
    FullFinetune,
    GradualUnfreezing,
    LayerwiseLRDecay,
    LoRA,
    Replay,
    SparseMemoryFinetune,
    TaskLoop,
)
from hope.layers.memory_layer import MemoryLayerConfig, swap_mlp_for_memory
from hope.tokenizer import Tokenizer
from tests.test_finetune_params import snapshot, tiny_model

LOOP = TaskLoop(epochs=1, batch_size=4, seq_len=32)
METHODS = {
    "full": lambda: FullFinetune(loop=LOOP),
    "lora": lambda: LoRA(rank=2, loop=LOOP),
    "ewc": lambda: EWC(lam=10.0, fisher_blocks=2, loop=LOOP),
    "replay": lambda source: Replay(buffer_ratio=0.25, general_ratio=0.25, general_source=source, general_blocks=4,
                                    loop=LOOP),
    "llrd": lambda: LayerwiseLRDecay(decay=0.5, loop=LOOP),
    "gradual": lambda: GradualUnfreezing(unfreeze_every=1, loop=LOOP),
    "smf": lambda source: SparseMemoryFinetune(top_t=8, background_source=source, background_batches=2,
                                               background_batch_size=2, loop=TaskLoop(lr=1.0, epochs=1, seq_len=32)),
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
