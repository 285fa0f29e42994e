"""`hope eval in-context-retention`: the accuracy matrix's bookkeeping against known answers, and the command end
to end on a model meta-trained on episodes by `hope fit` (JSON, plots, the checkpoint's episode options)."""

import json
import shutil

import numpy as np
import pytest
import torch

from hope.cli import main
from hope.data.episodes import EpisodeConfig, EpisodeGenerator
from hope.evaluation import acl_compare
from hope.evaluation.in_context import _episode_matrix, _summary, checkpoint_episodes
from hope.tokenizer import Tokenizer

EPISODES = ["--data.episodes.n_tasks", "2", "--data.episodes.items_per_task", "2", "--data.episodes.queries_per_task"]


def test_matrix_of_a_model_that_remembers_only_the_current_task():
    """Right on j == i, wrong elsewhere: R is the identity, so ACC = 1/T, BWT = -1 and forgetting = 1."""
    T = 4
    g = EpisodeGenerator(EpisodeConfig(n_tasks=T), Tokenizer.default())
    episode = g.episode(0, "test")
    logits = torch.zeros(len(episode.tokens), 4)
    for q in episode.queries:
        logits[q.position, q.answer if q.task == q.after else (q.answer + 1) % 4] = 1.0
    R = _episode_matrix(episode, logits, T)
    assert np.array_equal(np.nan_to_num(R, nan=-1), np.where(np.tri(T) == 1, np.eye(T), -1))
    assert _summary(R) == {
        "average_accuracy": 1 / T,
        "learning_accuracy": 1.0,
        "backward_transfer": -1.0,
        "forgetting": 1.0,
    }


def test_meta_train_then_report(tmp_path):
    """`hope fit` on episodes (a tiny SRWM, 2 steps), then the report reads the checkpoint's episode options."""
    root = tmp_path / "run"
    main(
        [
            "fit",
            "--config",
            "configs/acl/episodes-debug.yaml",
            "--trainer.default_root_dir",
            str(root),
            "--trainer.max_steps",
            "2",
            "--trainer.val_check_interval",
            "2",
            "--data.batch_size",
            "2",
            "--data.max_val_blocks",
            "2",
            "--model.overrides",
            '{"n_layer": 1, "n_embd": 32, "n_head": 2, "intermediate_size": 64}',
            *EPISODES,
            "2",
        ]
    )
    ckpt = root / "checkpoints" / "last.ckpt"
    assert checkpoint_episodes(ckpt) == EpisodeConfig(n_tasks=2, items_per_task=2, queries_per_task=2)
    out = tmp_path / "eval"
    main(["eval", "in-context-retention", "--checkpoint", str(ckpt), "--out_dir", str(out), "--n_episodes", "6"])
    report = json.loads((out / "in_context.json").read_text())
    assert report["family"] == "srwm" and report["chance"] == 0.25 and report["n_episodes"] == 6
    assert report["matrix"][0][1] is None and all(0 <= v <= 1 for v in (*report["matrix"][1], report["matrix"][0][0]))
    assert set(report["summary"]) == {"average_accuracy", "learning_accuracy", "backward_transfer", "forgetting"}
    assert (out / "in_context_matrix.png").stat().st_size > 0 and (out / "in_context_curves.png").stat().st_size > 0
    alone = tmp_path / "alone.ckpt"
    shutil.copy(ckpt, alone)
    with pytest.raises(ValueError, match="has no config.yaml with data.episodes beside it. Fix: pass the episodes"):
        main(["eval", "in-context-retention", "--checkpoint", str(alone), "--out_dir", str(out)])


def _write_report(root, run: str, kept: float) -> None:
    """A 2-task in-context report of run folder ``run`` in which task 1 drops from 0.9 to ``kept``."""
    report = {
        "chance": 0.25,
        "matrix": [[0.9, None], [kept, 0.8]],
        "matrix_stderr": [[0.01, None], [0.02, 0.01]],
        "summary": {"average_accuracy": 0.7, "learning_accuracy": 0.85, "backward_transfer": kept - 0.9},
        "summary_stderr": {"average_accuracy": 0.03, "learning_accuracy": 0.04, "backward_transfer": 0.05},
    }
    report["summary"]["forgetting"] = 0.9 - kept
    (root / run / "eval").mkdir(parents=True)
    (root / run / "eval" / "in_context.json").write_text(json.dumps(report))


def test_comparison_table_averages_seeds(tmp_path):
    """Two seeds of one model and objective: the table gives their mean and standard error, and the plot."""
    for seed, kept in (("1", 0.5), ("2", 0.7)):
        _write_report(tmp_path, f"srwm-acl-{seed}", kept)
    acl_compare.main([str(tmp_path), "--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "acl_comparison.md").read_text()
    row = "| srwm | acl | 2 | 0.900 ± 0.000 | 0.600 ± 0.100 | 0.850 ± 0.000 | 0.700 ± 0.000 | -0.300 ± 0.100 |"
    assert row in table
    assert (tmp_path / "out" / "acl_comparison.png").stat().st_size > 0


def test_comparison_table_one_seed_uses_episode_stderr(tmp_path):
    """One seed: the spread is the report's standard error over test episodes (none for forgetting, a max);
    a model name with a dash is split from its objective and seed."""
    _write_report(tmp_path, "transformer-window-current-7", 0.4)
    acl_compare.main([str(tmp_path), "--out", str(tmp_path / "out")])
    row = "| transformer-window | current | 1 | 0.900 ± 0.010 | 0.400 ± 0.020 | 0.850 ± 0.040 | 0.700 ± 0.030 |"
    table = (tmp_path / "out" / "acl_comparison.md").read_text()
    assert row + " -0.500 ± 0.050 | 0.500 |" in table
    assert json.loads((tmp_path / "out" / "acl_comparison.json").read_text())[0]["seeds"] == ["7"]


def test_comparison_plot_ticks_whole_tasks(tmp_path):
    """Task 1's curve is drawn at 1, 2 tasks shown, and only those x ticks are labelled."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    _write_report(tmp_path, "srwm-current-1", 0.3)
    fig = Figure()
    acl_compare.draw(fig, {"groups": acl_compare.collect(tmp_path), "chance": 0.25})
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [1, 2]
    assert list(ax.lines[0].get_ydata()) == [0.9, 0.3]
