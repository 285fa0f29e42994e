"""bench/titans_ablations.py (runs in titans_grid.py, tables in titans_tables.py): the tables it writes from a fake
result set, and the README markers it fills."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))

from titans_ablations import main  # noqa: E402
from titans_grid import BY_NAME, RUNS, resolved_config  # noqa: E402
from titans_memory_probe import freeze_memories, weight_movement  # noqa: E402
from titans_tables import fill, render  # noqa: E402

from hope.config import ModelConfig  # noqa: E402
from hope.model import HopeLM  # noqa: E402


def fake(name: str, seed: int, val: float, info: float, finite: bool = True) -> dict:
    return {
        "name": name,
        "seed": seed,
        "params": 3_000_000,
        "finite": finite,
        "val_ppl": val,
        "info_ppl": info,
        "train_seconds": 100.0,
    }


def results_of(rows: list[dict]) -> dict:
    return {(r["name"], r["seed"]): r for r in rows}


def row(table: str, label: str) -> list[str]:
    """The cells of the first table row whose first cell is ``label``."""
    line = next(line for line in table.splitlines() if line.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_ablation_table_mean_spread_and_ratio():
    results = results_of(
        [fake("transformer", 1, 100.0, 200.0), fake("transformer", 2, 100.0, 200.0)]
        + [fake("mac", 1, 90.0, 150.0), fake("mac", 2, 110.0, 250.0)]
    )
    table = render(results)["ablations"]
    mac = row(table, "+MAC")
    # mean and sample standard deviation over the two seeds: (150, 250) -> 200 ± 70.71; paired by seed, the ratios
    # to Transformer++ are 0.75 and 1.25: geometric mean sqrt(0.75 * 1.25) = 0.968, sample s.d. 0.354
    assert mac[3:9] == ["100.00 ± 14.14", "200.00 ± 70.71", "0.968 ± 0.354", "—", "26.67", "yes"]
    assert row(table, "LMM")[3:6] == ["—", "—", "—"]  # no results yet


def test_ratios_pair_seeds_and_skip_unpaired_ones():
    results = results_of([fake("transformer", 1, 100.0, 100.0), fake("transformer", 2, 100.0, 300.0)])
    results |= results_of([fake("mal", 2, 100.0, 240.0), fake("mal", 3, 100.0, 1.0)])  # seed 3: no baseline
    assert row(render(results)["ablations"], "+MAL")[5] == "0.800"  # 240 / 300 (the ratio of means would be 0.6)


def test_diverged_run_is_marked_not_averaged_away():
    results = results_of([fake("lmm", 1, math.nan, math.nan, finite=False), fake("lmm", 2, 50.0, 60.0)])
    results |= results_of([fake("lmm-nopersistent", 1, 70.0, 80.0)])
    tables = render(results)
    lmm = row(tables["ablations"], "LMM")
    assert lmm[3] == "NaN" and lmm[8] == "**no** (1/2 diverged)"
    assert row(tables["ordering"], "LMM < No persistent memory")[2:4] == ["—", "—"]


def test_ordering_against_table_5():
    # ours: LMM 10 < no persistent 20 (holds); MAG 30 > MAL 25 (reversed)
    ppl = {"lmm": 10.0, "lmm-nopersistent": 20.0, "mag": 30.0, "mal": 25.0}
    results = results_of([fake(name, 1, p, p) for name, p in ppl.items()])
    table = render(results)["ordering"]
    assert row(table, "LMM < No persistent memory")[2] == "holds (10.00 vs 20.00)"
    assert row(table, "+MAG < +MAL")[3] == "**reversed** (30.00 vs 25.00)"
    assert row(table, "+MAL < +MAC")[2] == "—"
    # 6 pairs among the four rows with results. Paper: MAG < MAL < LMM < no persistent; ours: LMM < no persistent
    # < MAL < MAG. Only (LMM, no persistent) keeps the paper's order.
    assert "All 6 pairs of the nine Table 5 rows, GNU info manuals (held out): 1 in the paper's order." in table


def test_targeted_table_has_every_run_of_the_group():
    results = results_of([fake("transformer", 1234, 100.0, 200.0), fake("mac-seg256", 1234, 90.0, 180.0)])
    results |= results_of([fake("transformer-matched", 1234, 100.0, 150.0)])
    table = render(results)["mac"]
    seg256 = ["segment_len 256 (= seq_len)", "90.00", "180.00", "0.900", "1.200", "yes", "100"]
    assert row(table, "`mac-seg256`")[1:8] == seg256
    assert len([r for r in RUNS if r.group == "mac"]) == sum(line.startswith("| `mac-") for line in table.splitlines())


def test_long_runs_compare_with_the_matched_baseline_of_the_same_steps():
    results = results_of([fake("transformer-matched-600", 1234, 50.0, 100.0), fake("mal-600", 1234, 45.0, 90.0)])
    results |= results_of([fake("transformer-matched", 1234, 10.0, 10.0), fake("transformer", 1234, 10.0, 10.0)])
    assert row(render(results)["long"], "`mal-600`")[4:6] == ["—", "0.900"]
    assert {r.steps for r in RUNS if r.group == "long"} == {600}


def test_fill_replaces_generated_blocks_and_keeps_the_prose():
    text = "# Title\n\nprose before\n\n<!-- BEGIN GENERATED: a -->\nold\n<!-- END GENERATED: a -->\n\nprose after\n"
    new = fill(text, {"a": "new table", "b": "second"})
    assert "prose before" in new and "prose after" in new and "old" not in new
    assert "<!-- BEGIN GENERATED: a -->\nnew table\n<!-- END GENERATED: a -->" in new
    assert new.rstrip().endswith("<!-- BEGIN GENERATED: b -->\nsecond\n<!-- END GENERATED: b -->")
    assert fill(new, {"a": "new table", "b": "second"}) == new  # idempotent


def test_tables_command_writes_the_readme_from_result_files(tmp_path):
    (tmp_path / "results").mkdir()
    for record in [fake("transformer", 1234, 100.0, 200.0), fake("mag", 1234, 95.0, 190.0)]:
        (tmp_path / "results" / f"{record['name']}-seed{record['seed']}.json").write_text(json.dumps(record))
    main(["--tables", "--out", str(tmp_path)])
    readme = (tmp_path / "README.md").read_text()
    assert row(readme, "+MAG")[3:6] == ["95.00", "190.00", "0.950"]


def test_seeds_runs_only_those_seeds_and_reuses_a_finished_twin(tmp_path):
    """--seeds 1234 fills +MAC's seed 1234 from the finished mac-before run (same config, seed and steps) and does
    not start seed 1235 (which would train)."""
    (tmp_path / "results").mkdir()
    (tmp_path / "corpora" / "info").mkdir(parents=True)
    twin = fake("mac-before", 1234, 300.0, 1200.0) | {"steps": 150, "model_config": resolved_config(BY_NAME["mac"])}
    (tmp_path / "results" / "mac-before-seed1234.json").write_text(json.dumps(twin))
    main(["--group", "ablation", "--only", "mac", "--seeds", "1234", "--out", str(tmp_path)]
         + ["--corpora", str(tmp_path / "corpora"), "--runs_dir", str(tmp_path / "runs")])  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["mac-before-seed1234.json", "mac-seed1234.json"]
    assert json.loads((tmp_path / "results" / "mac-seed1234.json").read_text())["val_ppl"] == 300.0


def test_every_run_is_a_valid_config_and_targeted_runs_change_one_thing():
    for run in RUNS:
        assert ModelConfig(**resolved_config(run)).family == run.family
        assert run.steps is None or type(run.steps) is int, run.name  # not a dict passed by position
        assert run.paper is None or type(run.paper) is float, run.name
    for group, before_run in [("mac", "mac-before"), ("mag", "mag"), ("mal", "mal"), ("lmm", "lmm")]:
        before = resolved_config(BY_NAME[before_run])
        for run in (r for r in RUNS if r.group == group and r.name not in ("mac-before", "mac-literal")):
            changed = {k for k, v in resolved_config(run).items() if before[k] != v}
            expected = 2 if run.name == "mac-np16-lr0.125" else 1  # the two best changes together
            assert len(changed) == expected, (run.name, changed)


@pytest.mark.parametrize("family", ["titans-mac", "titans-mag", "titans-lmm"])
def test_memory_probe_freezes_every_memory(family):
    """bench/titans_memory_probe.py: a frozen memory ends a window at its initial weights, a trained one does not."""
    window = {"sliding_window": 8} if family == "titans-mag" else {}
    config = ModelConfig(
        family=family, vocab_size=50, n_layer=2, n_head=2, n_embd=16, intermediate_size=32, max_seq_len=64,
        memory_chunk_size=4, segment_len=8, memory_max_lr=0.25, **window,
    )  # fmt: skip
    torch.manual_seed(0)
    model, idx = HopeLM(config), torch.randint(0, 50, (3, 32))
    moved = weight_movement(model, idx)
    assert len(moved) == 2 and min(moved) > 1e-3
    logits = model(idx)[0]
    assert freeze_memories(model) == 2
    assert weight_movement(model, idx) == [0.0, 0.0]
    assert not torch.allclose(model(idx)[0], logits)  # what the memory wrote changed the predictions
