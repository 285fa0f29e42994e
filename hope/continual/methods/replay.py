"""Experience replay: every training batch also carries examples of earlier tasks and/or of general data.

Two pools feed it: a **buffer** of earlier tasks' sequences (in the retention harness it fills itself after each
task, by reservoir sampling over every sequence seen, so it holds a uniform sample of all earlier tasks; in
``hope finetune`` it is filled from ``replay_sources``), and **general** data (``general_source``, e.g. the
pretraining corpus), which counters the drift away from general ability.

Ratios are shares of the trained sequences: with ``buffer_ratio`` 0.2 and ``general_ratio`` 0.1, 70% of the
sequences are the task's, 20% replayed from the buffer and 10% general. The task's batches are kept whole and the
replayed rows appended, so a step trains on about ``batch_size / (1 - 0.3)`` sequences; the number appended per
step is rounded so that the running totals hit the ratios exactly. Which rows are drawn depends only on the seed,
the task and the step, and the running totals are in the checkpoint, so a resumed run replays the same rows.
"""

from __future__ import annotations

import math
import random

import torch
from torch import nn

from hope.continual.finetune import FinetuneMethod, TaskLoop
from hope.data.blocks import source_blocks
from hope.tokenizer import Tokenizer


class Replay(FinetuneMethod):
    """Full finetuning on task batches with replayed sequences appended (see the module docstring).

    Args:
        buffer_ratio: share of the trained sequences drawn from the buffer of earlier tasks.
        general_ratio: share drawn from general data.
        buffer_size: sequences the buffer holds.
        general_source: the general data (a ``data.source`` spec; ``default`` is the built-in corpus), train split.
        general_blocks: sequences of general data kept in memory to draw from.
        replay_sources: ``hope finetune`` only: data of the earlier tasks (``data.source`` specs) that fill the
            buffer, ``buffer_size`` sequences split evenly between them.
        seed: which rows are drawn and kept.
        loop: how ``learn`` trains on a task of the retention harness.
    """

    name = "replay"

    def __init__(
        self,
        buffer_ratio: float = 0.25,
        general_ratio: float = 0.0,
        buffer_size: int = 256,
        general_source: str = "default",
        general_blocks: int = 128,
        replay_sources: list[str] | None = None,
        seed: int = 0,
        loop: TaskLoop | None = None,
    ) -> None:
        super().__init__(loop)
        if buffer_ratio < 0 or general_ratio < 0 or buffer_ratio + general_ratio >= 1:
            raise ValueError(
                f"Replay needs buffer_ratio, general_ratio >= 0 with a sum < 1 (got {buffer_ratio} + "
                f"{general_ratio}): the rest of each batch is the task's."
            )
        self.buffer_ratio, self.general_ratio = buffer_ratio, general_ratio
        self.buffer_size, self.general_source, self.general_blocks = buffer_size, general_source, general_blocks
        self.replay_sources, self.seed = replay_sources, seed
        self._buffer: tuple[torch.Tensor, torch.Tensor] | None = None
        self._general: tuple[torch.Tensor, torch.Tensor] | None = None
        self._task_rows = 0  # task sequences trained on so far
        self._replayed = {"buffer": 0, "general": 0}
        self._seen = 0  # sequences offered to the reservoir so far

    # -- pools -----------------------------------------------------------------------------------------------------
    def setup_data(self, model: nn.Module, tokenizer: Tokenizer, seq_len: int) -> None:
        """Draw the general pool (if ``general_ratio`` > 0) and fill the buffer from ``replay_sources``, if missing."""
        if self.general_ratio > 0 and self._general is None:
            self._general = source_blocks(self.general_source, tokenizer, seq_len, self.general_blocks)
        if self._buffer is None and self.replay_sources:
            per_source = max(1, self.buffer_size // len(self.replay_sources))
            parts = [source_blocks(s, tokenizer, seq_len, per_source, split="all") for s in self.replay_sources]
            self._buffer = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))

    def check_finetune(self) -> None:
        """Raise if ``buffer_ratio`` > 0 but the buffer is empty (``hope finetune`` without ``replay_sources``)."""
        if self.buffer_ratio > 0 and self._buffer is None:
            raise ValueError(
                "Replay with buffer_ratio > 0 in `hope finetune` needs earlier tasks' data: set "
                "method.init_args.replay_sources (or buffer_ratio 0 with general_ratio > 0)."
            )

    def end_task(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        """Reservoir sampling: every sequence seen so far is in the buffer with the same probability."""
        rng = random.Random(f"{self.seed}/reservoir/{self._tasks_learned}")
        keep_in, keep_lab = ([], []) if self._buffer is None else (list(self._buffer[0]), list(self._buffer[1]))
        for x, y in zip(inputs, labels, strict=True):
            self._seen += 1
            if len(keep_in) < self.buffer_size:
                keep_in.append(x)
                keep_lab.append(y)
            elif (j := rng.randrange(self._seen)) < self.buffer_size:
                keep_in[j], keep_lab[j] = x, y
        if keep_in:
            self._buffer = (torch.stack(keep_in), torch.stack(keep_lab))

    # -- mixing ----------------------------------------------------------------------------------------------------
    def _rows(self, ratio: float, before: int, after: int) -> int:
        """Rows to append so that replayed / (task + replayed) stays at ``ratio`` over the running totals."""
        share = ratio / (1 - self.buffer_ratio - self.general_ratio)
        return math.floor(after * share + 1e-9) - math.floor(before * share + 1e-9)

    def mix_batch(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """The task batch plus buffer and general rows (drawn by seed, task and step) that keep the running ratios."""
        before, self._task_rows = self._task_rows, self._task_rows + len(batch["input_ids"])
        gen = torch.Generator().manual_seed(random.Random(f"{self.seed}/{self._tasks_learned}/{step}").randrange(2**31))
        inputs, labels = [batch["input_ids"]], [batch["labels"]]
        for pool_name, pool, ratio in (
            ("buffer", self._buffer, self.buffer_ratio),
            ("general", self._general, self.general_ratio),
        ):
            n = self._rows(ratio, before, self._task_rows)
            if pool is None or n == 0:
                continue
            if pool[0].shape[1] != batch["input_ids"].shape[1]:
                raise ValueError(
                    f"replay {pool_name} sequences have {pool[0].shape[1]} tokens, the batch "
                    f"{batch['input_ids'].shape[1]}; use one seq_len."
                )
            rows = torch.randint(len(pool[0]), (n,), generator=gen)
            inputs.append(pool[0][rows].to(batch["input_ids"].device))
            labels.append(pool[1][rows].to(batch["labels"].device))
            self._replayed[pool_name] += n
        return {**batch, "input_ids": torch.cat(inputs), "labels": torch.cat(labels)}

    def step_stats(self) -> dict[str, float]:
        """Shares of all trained sequences replayed so far from each pool, logged as ``train/replayed_<pool>_share``."""
        total = self._task_rows + sum(self._replayed.values())
        return {f"replayed_{k}_share": v / max(total, 1) for k, v in self._replayed.items()}

    # -- state -----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The base state plus the buffer tensors and the running totals, so a resumed run replays the same rows."""
        buffer = {} if self._buffer is None else {"buffer_inputs": self._buffer[0], "buffer_labels": self._buffer[1]}
        return {
            **super().state_dict(),
            **buffer,
            "task_rows": self._task_rows,
            "seen": self._seen,
            "replayed": dict(self._replayed),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the buffer and the running totals saved by ``state_dict``."""
        super().load_state_dict(state)
        if "buffer_inputs" in state:
            self._buffer = (state["buffer_inputs"], state["buffer_labels"])
        self._task_rows, self._seen = state.get("task_rows", 0), state.get("seen", 0)
        self._replayed = dict(state.get("replayed", {"buffer": 0, "general": 0}))
