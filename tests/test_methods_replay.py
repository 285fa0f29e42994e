"""Replay: appended rows hit the configured shares exactly, come from the right pools, and are reproducible."""

import pytest
import torch

from hope.continual.methods import Replay


def pools(method, seq_len=8):
    # buffer rows are all 1, general rows all 2, task rows all 0: a row's first token says where it came from
    method._buffer = (torch.full((10, seq_len), 1), torch.full((10, seq_len), 1))
    method._general = (torch.full((10, seq_len), 2), torch.full((10, seq_len), 2))
    return method


def task_batch(rows=4, seq_len=8):
    return {
        "input_ids": torch.zeros(rows, seq_len, dtype=torch.long),
        "labels": torch.zeros(rows, seq_len, dtype=torch.long),
    }


@pytest.mark.parametrize(("buffer_ratio", "general_ratio"), [(0.25, 0.0), (0.2, 0.1), (0.0, 0.5), (0.3, 0.3)])
def test_mix_ratio_is_exact(buffer_ratio, general_ratio):
    method = pools(Replay(buffer_ratio=buffer_ratio, general_ratio=general_ratio))
    counts = torch.zeros(3)
    for step in range(40):
        mixed = method.mix_batch(task_batch(), step)
        assert mixed["input_ids"].shape[1] == 8 and torch.equal(mixed["input_ids"], mixed["labels"])
        assert torch.equal(mixed["input_ids"][:4], torch.zeros(4, 8, dtype=torch.long))  # the task's rows stay whole
        counts += torch.bincount(mixed["input_ids"][:, 0], minlength=3)
    total = counts.sum()
    assert counts[0] == 160
    assert abs(counts[1] / total - buffer_ratio) < 1 / total and abs(counts[2] / total - general_ratio) < 1 / total


def test_rows_depend_only_on_seed_task_and_step():
    a, b = Replay(buffer_ratio=0.5, seed=3), Replay(buffer_ratio=0.5, seed=3)
    for m in (a, b):
        m._buffer = (torch.arange(80).view(10, 8), torch.arange(80).view(10, 8))
    for step in range(5):
        a.mix_batch(task_batch(), step)  # b resumes at step 5 with a's running totals
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.mix_batch(task_batch(), 5)["input_ids"], b.mix_batch(task_batch(), 5)["input_ids"])


def test_reservoir_buffer_keeps_a_bounded_sample_of_every_task():
    method = Replay(buffer_size=30)
    for task in range(3):
        blocks = torch.full((40, 8), task)
        method.end_task(None, blocks, blocks)
        method._tasks_learned += 1
    kept = torch.bincount(method._buffer[0][:, 0], minlength=3)
    assert len(method._buffer[0]) == 30 and (kept > 0).all()


def test_invalid_ratios():
    with pytest.raises(ValueError, match="sum < 1"):
        Replay(buffer_ratio=0.6, general_ratio=0.4)
