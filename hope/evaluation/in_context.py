"""In-context retention (``hope eval in-context-retention``): how well a model meta-trained on episodes
(``hope.data.episodes``) keeps earlier tasks in its state while it learns later ones in context.

Fresh ``test`` episodes are read in one forward pass each. At every query the model's logits over the task labels
give its answer (the highest; ties to the first), so ``R[i][j]`` is the accuracy on task j's questions asked after
the demonstrations of tasks 1..i (row i: after task i; chance = 1 / n_labels). Only i >= j is measured: a task not
shown yet is a fresh random mapping, at chance by construction. From R, with ``hope.evaluation.metrics`` as the
retention harness computes them: average accuracy (last row), learning accuracy (diagonal), BWT and forgetting.
Spread: standard errors over episodes of every entry and of the linear scores (each episode asks the same number of
questions per entry, so the mean of per-episode scores is the score of the mean R).

Outputs: ``in_context.json`` and two PNGs, ``in_context_matrix.png`` (R) and ``in_context_curves.png`` (each
task's accuracy as later tasks are shown).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from tqdm.auto import tqdm

from hope.data.episodes import Episode, EpisodeConfig, EpisodeGenerator
from hope.evaluation import metrics
from hope.evaluation.loading import load_for_eval
from hope.evaluation.plots import save_figure
from hope.tokenizer import Tokenizer

LINEAR = ("average_accuracy", "learning_accuracy", "backward_transfer")


def checkpoint_episodes(checkpoint: str | Path) -> EpisodeConfig | None:
    """``data.episodes`` of the ``config.yaml`` that ``hope fit`` wrote beside the checkpoint, if any."""
    config = Path(checkpoint).with_name("config.yaml")
    if not config.is_file():
        return None
    episodes = ((yaml.safe_load(config.read_text()) or {}).get("data") or {}).get("episodes")
    return None if episodes is None else EpisodeConfig(**episodes)


def _batch(episodes: list[Episode], pad_id: int, max_len: int) -> torch.Tensor:
    """The episodes' tokens [B, longest], right-padded (padding comes after every query, so it changes nothing)."""
    longest = max(len(e.tokens) for e in episodes)
    if longest > max_len:
        raise ValueError(
            f"these episodes have up to {longest} tokens, more than the model's max_seq_len={max_len}. Fix: fewer "
            "--episodes.n_tasks, demos_per_task or queries_per_task."
        )
    return torch.tensor([e.tokens + [pad_id] * (longest - len(e.tokens)) for e in episodes])


def _episode_matrix(episode: Episode, label_logits: torch.Tensor, n_tasks: int) -> np.ndarray:
    """R of one episode [T, T] (NaN above the diagonal) from its logits over the labels [L, n_labels]."""
    positions = torch.tensor([q.position for q in episode.queries])
    answers = torch.tensor([q.answer for q in episode.queries])
    correct = (label_logits[positions].argmax(-1).cpu() == answers).double().numpy()
    total, count = np.zeros((n_tasks, n_tasks)), np.zeros((n_tasks, n_tasks))
    for q, c in zip(episode.queries, correct, strict=True):
        total[q.after, q.task] += c
        count[q.after, q.task] += 1
    with np.errstate(invalid="ignore"):
        return total / count


def _summary(R: np.ndarray) -> dict[str, float]:
    """The retention harness's scores that need only i >= j (no forward transfer: unseen tasks are at chance)."""
    return {
        "average_accuracy": metrics.average_accuracy(R),
        "learning_accuracy": metrics.learning_accuracy(R),
        "backward_transfer": metrics.backward_transfer(R),
        "forgetting": metrics.forgetting(R),
    }


@torch.no_grad()
def evaluate_in_context(
    model: nn.Module,
    tokenizer: Tokenizer,
    config: EpisodeConfig,
    n_episodes: int = 256,
    batch_size: int = 16,
    progress: bool = True,
) -> dict:
    """R (mean and standard error over ``n_episodes`` test episodes) and its summary; see the module docstring."""
    started = time.perf_counter()
    generator = EpisodeGenerator(config, tokenizer)
    T, device = config.n_tasks, next(model.parameters()).device
    labels = torch.tensor(generator.label_ids, device=device)
    pad_id = tokenizer.eos_id if tokenizer.eos_id is not None else 0
    model.eval()
    per_episode = []
    for start in tqdm(range(0, n_episodes, batch_size), desc="in-context retention", disable=not progress):
        episodes = [generator.episode(i, "test") for i in range(start, min(start + batch_size, n_episodes))]
        logits, _ = model(_batch(episodes, pad_id, model.config.max_seq_len).to(device))
        label_logits = logits.index_select(-1, labels).float()
        per_episode += [_episode_matrix(e, label_logits[b], T) for b, e in enumerate(episodes)]
    stack = np.stack(per_episode)  # [n, T, T]
    R = stack.mean(0)
    stderr = stack.std(0, ddof=1) / np.sqrt(len(stack)) if len(stack) > 1 else np.zeros_like(R)
    scores = np.array([[_summary(m)[k] for k in LINEAR] for m in stack])
    summary_stderr = scores.std(0, ddof=1) / np.sqrt(len(scores)) if len(scores) > 1 else np.zeros(len(LINEAR))
    as_list = lambda M: [[None if np.isnan(v) else float(v) for v in row] for row in M]
    return {
        "episodes": dataclasses.asdict(config),
        "split": "test",
        "n_episodes": n_episodes,
        "chance": generator.chance,
        "labels": generator.label_words,
        "task_names": [f"task {j + 1}" for j in range(T)],
        "matrix": as_list(R),
        "matrix_stderr": as_list(stderr),
        "summary": _summary(R),
        "summary_stderr": dict(zip(LINEAR, map(float, summary_stderr), strict=True)),
        "seconds": round(time.perf_counter() - started, 3),
    }


def format_in_context(report: dict) -> str:
    """The matrix (mean ± standard error) and the summary, for the terminal."""
    names = report["task_names"]
    lines = [f"in-context retention, {report['n_episodes']} test episodes: accuracy (chance {report['chance']:.3g})"]
    lines.append(" " * 14 + "".join(n.rjust(14) for n in names))
    for name, row, err in zip(names, report["matrix"], report["matrix_stderr"], strict=True):
        cells = ["" if v is None else f"{v:.3f}±{e:.3f}" for v, e in zip(row, err, strict=True)]
        lines.append(f"after {name:<8}" + "".join(c.rjust(14) for c in cells))
    s, e = report["summary"], report["summary_stderr"]
    lines.append("  ".join(f"{k} {v:.3f}" + (f"±{e[k]:.3f}" if k in e else "") for k, v in s.items()))
    return "\n".join(lines)


def draw_in_context_matrix(fig, report: dict) -> None:
    """Heatmap of R: rows = after task i was shown, columns = task j (blank above the diagonal)."""
    names, R = report["task_names"], np.array(report["matrix"], dtype=float)
    ax = fig.add_subplot()
    im = ax.imshow(R, cmap="viridis", vmin=report["chance"], vmax=1, aspect="auto")
    fig.colorbar(im, ax=ax, label="accuracy")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_yticks(range(len(names)), [f"after {n}" for n in names], fontsize=8)
    ax.set_xlabel("task asked about")
    for i, j in zip(*np.nonzero(~np.isnan(R)), strict=True):
        err = report["matrix_stderr"][i][j]
        dark = R[i, j] < (1 + report["chance"]) / 2
        ax.text(j, i, f"{R[i, j]:.2f}±{err:.2f}", ha="center", va="center", fontsize=8, color="wb"[not dark])
    s = report["summary"]
    ax.set_title(
        f"{report.get('model', '')}: ACC {s['average_accuracy']:.3f}  BWT {s['backward_transfer']:+.3f}  "
        f"forgetting {s['forgetting']:.3f}  (chance {report['chance']:.2f})",
        fontsize=9,
    )


def draw_in_context_curves(fig, report: dict) -> None:
    """One line per task: its accuracy after each later task was shown, with standard-error bars."""
    names, R = report["task_names"], report["matrix"]
    ax = fig.add_subplot()
    for j, name in enumerate(names):
        steps = list(range(j, len(names)))
        ax.errorbar(
            steps, [R[i][j] for i in steps], yerr=[report["matrix_stderr"][i][j] for i in steps], marker="o", label=name
        )
    ax.axhline(report["chance"], color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(range(len(names)), [f"after {n}" for n in names], fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{report.get('model', '')}: each task's accuracy as later tasks are learned in context", fontsize=9)


def in_context_retention(
    *,
    checkpoint: str,
    episodes: EpisodeConfig | None = None,
    n_episodes: int = 256,
    batch_size: int = 16,
    tokenizer: str | None = None,
    out_dir: str = "runs/eval/in-context",
    device: str | None = None,
    progress: bool = True,
) -> None:
    """In-context retention of a model meta-trained on episodes: the accuracy matrix R[i][j] (task j after tasks
    1..i were shown in context), average accuracy, BWT, forgetting, with standard errors over episodes.

    Writes ``in_context.json``, ``in_context_matrix.png`` and ``in_context_curves.png`` to ``out_dir``.

    Args:
        checkpoint: the model (``.ckpt`` of ``hope fit``, or ``.safetensors``).
        episodes: the episodes (``--episodes.n_tasks 5`` ...); default: the checkpoint's training episodes (its
            ``config.yaml``'s ``data.episodes``). The test episodes are never trained or validated on.
        n_episodes: test episodes to read.
        batch_size: episodes per forward pass.
        tokenizer: sentencepiece ``.model``; default: the checkpoint's, else the default tokenizer.
        out_dir: where the report and plots go.
        device: ``cpu``, ``cuda``, ...; default: CUDA if available.
        progress: show a progress bar.
    """
    episodes = episodes or checkpoint_episodes(checkpoint)
    if episodes is None:
        raise ValueError(
            f"{checkpoint} has no config.yaml with data.episodes beside it. Fix: pass the episodes, e.g. "
            "--episodes.n_tasks 3 --episodes.items_per_task 4 (the options of hope.data.episodes.EpisodeConfig)."
        )
    model, tok = load_for_eval(checkpoint, tokenizer, device)
    report = {"checkpoint": str(checkpoint), "model": model.config.name, "family": model.config.family}
    report.update(evaluate_in_context(model, tok, episodes, n_episodes, batch_size, progress))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "in_context.json").write_text(json.dumps(report, indent=2) + "\n")
    for name, draw in (("matrix", draw_in_context_matrix), ("curves", draw_in_context_curves)):
        save_figure(draw, report, out / f"in_context_{name}.png")
    print(format_in_context(report))
    print(f"[hope] report: {out / 'in_context.json'}  plots: {out}/in_context_{{matrix,curves}}.png")
