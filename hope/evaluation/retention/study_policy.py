"""Train a study policy (issue 16, piece 5) by REINFORCE over episodes of held-out fact sets, and evaluate it.

    python -m hope.evaluation.retention.study_policy train --checkpoint CKPT --episodes 60 --out runs/study-policy
    python -m hope.evaluation.retention.study_policy evaluate --checkpoint CKPT --policy runs/study-policy/policy.json

An episode draws a fresh ``SyntheticFacts`` suite (its own seed: new people, new values), lets the policy choose an
operator for every study item (``hope.continual.study_policy``), and runs the retention harness from the same
starting weights with ``GapStudy(focus="all", notes=policy)``: every item studied as its operator writes it, in
the same number of steps whatever the operators. The episode's reward is the harness's gain, learned minus
forgotten: ``mean_j (R[T][j] - R[0][j])``, which equals ``mean_j (R[j][j] - R[0][j]) - mean_j (R[j][j] -
R[T][j])`` (learned on each task, minus forgotten of it by the end; in accuracy).

The gain is a mean over questions, one per study item, so each item's own gain (its question right at the end
minus right at the start; or, with ``reward="probability"``, the answer's probability among the candidates, the
smooth form of the same) is credited to the operator that wrote it. REINFORCE (``StudyPolicy.update``) then moves
each item's operator by its advantage: its gain minus the mean gain of the episode's other items (the baseline,
which removes how hard the episode was), divided by the episode's spread. Crediting an item's operator with its
own question ignores what the operator does to the other items (replay's purpose is the earlier tasks' items);
the episode reward, logged beside it, is the whole effect.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from jsonargparse import CLI
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from hope.continual.finetune import TaskLoop
from hope.continual.methods.self_study import GapStudy
from hope.continual.study_policy import StudyPolicy
from hope.evaluation import metrics
from hope.evaluation.loading import load_for_eval
from hope.evaluation.plots import save_figure
from hope.evaluation.retention.facts import SyntheticFacts
from hope.evaluation.retention.harness import run_retention
from hope.evaluation.retention.tasks import CandidateRanking, TaskSuite
from hope.tokenizer import Tokenizer

REWARDS = ("probability", "accuracy")


@dataclass
class Episode:
    """The size of one episode: its fact sets and the short finetune that learns them."""

    tasks: int = 2
    """Fact sets learned in order (2: the first can be forgotten)."""
    people: int = 10
    """People per fact set (4 facts each, one study item and one test question per fact)."""
    epochs: int = 5
    """Passes over each task's study texts."""
    lr: float = 1e-3
    """AdamW learning rate of the finetune."""
    batch_size: int = 8
    """Sequences per step."""
    seq_len: int = 128
    """Tokens per sequence."""


DEFAULT_EPISODE = Episode()


class RecordedRanking(CandidateRanking):
    """``CandidateRanking`` that keeps each evaluation's candidate scores (the harness evaluates every row)."""

    def __init__(self, test: CandidateRanking) -> None:
        super().__init__(test.items)
        self.rows: list[list[list[float]]] = []

    def evaluate(self, model: nn.Module, tokenizer: Tokenizer, context) -> float:
        """The accuracy, as ``CandidateRanking``'s; the per-item scores are kept in ``rows``."""
        self.rows.append(self.candidate_scores(model, tokenizer, context))
        return sum(self.correct(self.rows[-1])) / len(self.items)


class _Fixed(TaskSuite):
    """A suite whose tasks are already built (here: with recording test sets)."""

    def __init__(self, name: str, tasks: list) -> None:
        self.name, self._tasks = name, tasks

    def tasks(self) -> list:
        return self._tasks


def item_gains(test: RecordedRanking, reward: str) -> list[float]:
    """Per question, its score at the end minus at the start (right or not; or the answer's probability)."""
    first, last = test.rows[0], test.rows[-1]
    if reward == "accuracy":
        return [float(b) - float(a) for a, b in zip(test.correct(first), test.correct(last), strict=True)]
    answer = [item.candidates.index(item.answer) for item in test.items]
    p = [
        [float(torch.tensor(s, dtype=torch.float64).softmax(0)[k]) for s, k in zip(row, answer, strict=True)]
        for row in (first, last)
    ]
    return [b - a for a, b in zip(*p, strict=True)]


def run_episode(
    model: nn.Module, start: dict, tokenizer: Tokenizer, policy: StudyPolicy, seed: int, size: Episode, reward: str
) -> dict:
    """One episode from the ``start`` weights: ``{reward, learned, forgotten, items, chosen, gains}``."""
    model.load_state_dict(start)
    tasks = SyntheticFacts(n_tasks=size.tasks, people_per_task=size.people, seed=seed).tasks()
    for task in tasks:
        task.test = RecordedRanking(task.test)
    loop = TaskLoop(lr=size.lr, epochs=size.epochs, batch_size=size.batch_size, seq_len=size.seq_len, seed=seed)
    method = GapStudy(focus="all", notes=policy, loop=loop)
    R = run_retention(model, tokenizer, _Fixed("facts", tasks), method, progress=False)["matrix_with_initial"]
    T = len(tasks)
    return {
        "seed": seed,
        "reward": sum(R[T][j] - R[0][j] for j in range(T)) / T,
        "learned": sum(R[j + 1][j] - R[0][j] for j in range(T)) / T,
        "forgotten": sum(R[j + 1][j] - R[T][j] for j in range(T)) / T,
        "items": [item for task in tasks for item in task.study],
        "chosen": [op for ops in method.chosen_operators() for op in ops],
        "gains": [g for task in tasks for g in item_gains(task.test, reward)],
    }


def advantages(gains: list[float]) -> list[float]:
    """Each gain minus the mean of the others (leave-one-out baseline), over the gains' standard deviation."""
    n, total = len(gains), sum(gains)
    spread = statistics.pstdev(gains) or 1.0
    return [(g - (total - g) / max(n - 1, 1)) / spread for g in gains]


def mean_probabilities(policy: StudyPolicy, items: list) -> dict[str, float]:
    """Each operator's probability, averaged over ``items`` (the policy's preferences on an episode)."""
    probs = [policy.probabilities(item) for item in items]
    return {op: sum(p[k] for p in probs) / len(probs) for k, op in enumerate(policy.operators)}


def train(
    *,
    checkpoint: str,
    episodes: int = 60,
    size: Episode = DEFAULT_EPISODE,
    reward: str = "probability",
    policy_lr: float = 2.0,
    condition: str = "relation",
    out: str = "runs/study-policy",
    seed: int = 1000,
    device: str = "cpu",
) -> StudyPolicy:
    """Train a study policy by REINFORCE and write ``policy.json``, ``episodes.json``, ``preferences.png`` and
    TensorBoard scalars (``tensorboard/``) to ``out``.

    Args:
        checkpoint: the model every episode starts from (read only).
        episodes: episodes to train on (each a new fact set; seeds ``seed``, ``seed + 1``, ...).
        size: the fact sets and the finetune of an episode (``--size.people 10 --size.epochs 5``).
        reward: each item's gain as ``probability`` of its answer (smooth) or ``accuracy`` (right or not).
        policy_lr: REINFORCE step size on the logits.
        condition: ``relation`` (one softmax per kind of fact) or ``none`` (one for all).
        out: output folder.
        seed: the first episode's suite seed (``evaluate`` uses others).
        device: where the model runs.
    """
    if reward not in REWARDS or episodes < 1:
        raise ValueError(f"train needs reward in {REWARDS} and episodes >= 1 (got {reward!r}, {episodes})")
    torch.manual_seed(0)
    model, tokenizer = load_for_eval(checkpoint, device=device)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    policy, log = StudyPolicy(condition=condition), []
    writer = SummaryWriter(str(Path(out) / "tensorboard"))
    try:
        for k in range(episodes):
            ep = run_episode(model, start, tokenizer, policy, seed + k, size, reward)
            per_op = {
                op: [g for g, c in zip(ep["gains"], ep["chosen"], strict=True) if c == op] for op in policy.operators
            }
            policy.update(ep["items"], ep["chosen"], advantages(ep["gains"]), policy_lr)
            prefs = mean_probabilities(policy, ep["items"])
            log.append(
                {
                    **{key: ep[key] for key in ("seed", "reward", "learned", "forgotten")},
                    "item_gain": sum(ep["gains"]) / len(ep["gains"]),
                    "gain_by_operator": {op: sum(g) / len(g) if g else None for op, g in per_op.items()},
                    "probabilities": prefs,
                }
            )
            for key in ("reward", "learned", "forgotten", "item_gain"):
                writer.add_scalar(f"episode/{key}", log[-1][key], k)
            for op, p in prefs.items():
                writer.add_scalar(f"probability/{op}", p, k)
            print(
                f"[study-policy] episode {k + 1}/{episodes}: reward {ep['reward']:+.3f} "
                + " ".join(f"{op} {p:.2f}" for op, p in prefs.items()),
                flush=True,
            )
    finally:
        writer.close()
    report = {"checkpoint": checkpoint, "size": asdict(size), "reward": reward, "policy_lr": policy_lr, "log": log}
    policy.save(Path(out) / "policy.json")
    (Path(out) / "episodes.json").write_text(json.dumps(report, indent=2) + "\n")
    save_figure(draw_preferences, report, Path(out) / "preferences.png", figsize=(10, 4))
    return policy


def draw_preferences(fig, report: dict) -> None:
    """Left: each operator's mean probability after every episode; right: the episode reward and its running mean."""
    log = report["log"]
    x = list(range(1, len(log) + 1))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for op in log[0]["probabilities"]:
        left.plot(x, [e["probabilities"][op] for e in log], label=op)
    left.set_xlabel("episode")
    left.set_ylabel("probability (mean over the episode's items)")
    left.legend(fontsize=8)
    rewards = [e["reward"] for e in log]
    window = max(len(log) // 6, 1)
    running = [
        sum(rewards[max(0, i - window + 1) : i + 1]) / len(rewards[max(0, i - window + 1) : i + 1])
        for i in range(len(rewards))
    ]
    right.plot(x, rewards, ".", alpha=0.5, label="episode")
    right.plot(x, running, label=f"running mean ({window})")
    right.set_xlabel("episode")
    right.set_ylabel("reward: accuracy learned minus forgotten")
    right.legend(fontsize=8)
    fig.suptitle("Study policy: operator preferences and reward (REINFORCE)", fontsize=10)


def evaluate(
    *,
    checkpoint: str,
    policy: str,
    episodes: int = 6,
    size: Episode = DEFAULT_EPISODE,
    seed: int = 5000,
    out: str = "runs/study-policy",
    device: str = "cpu",
) -> dict:
    """The learned policy (sampled and argmax) against a uniformly random operator and the source statements, on
    the same held-out episodes (seeds ``seed`` ...) in the same steps; writes ``evaluation.json`` to ``out``.

    Args:
        checkpoint: the model every episode starts from.
        policy: the trained policy's JSON.
        episodes: held-out episodes (fact sets) per strategy.
        size: as in ``train``.
        seed: the first held-out suite seed (apart from training's).
        out: output folder.
        device: where the model runs.
    """
    learned = StudyPolicy.load(policy)
    strategies = {
        "learned": learned,
        "learned_argmax": StudyPolicy(learned.operators, learned.condition, learned.logits, "argmax"),
        "uniform": StudyPolicy(learned.operators, learned.condition),
        "source": StudyPolicy(["source"]),
    }
    torch.manual_seed(0)
    model, tokenizer = load_for_eval(checkpoint, device=device)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    rewards: dict[str, list[float]] = {name: [] for name in strategies}
    for k in range(episodes):
        for name, strategy in strategies.items():
            ep = run_episode(model, start, tokenizer, strategy, seed + k, size, "accuracy")
            rewards[name].append(ep["reward"])
            print(f"[study-policy] held-out episode {k + 1}/{episodes} {name}: reward {ep['reward']:+.3f}", flush=True)
    report = {
        "checkpoint": checkpoint,
        "policy": policy,
        "size": asdict(size),
        "seeds": [seed + k for k in range(episodes)],
        "rewards": rewards,
        "summary": {name: mean_and_error(r) for name, r in rewards.items()},
        "paired_vs_source": {
            name: mean_and_error([a - b for a, b in zip(r, rewards["source"], strict=True)])
            for name, r in rewards.items()
            if name != "source"
        },
    }
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def mean_and_error(values: list[float]) -> dict[str, float | None]:
    """Mean and standard error of the mean (None for one value)."""
    return {"mean": statistics.fmean(values), "standard_error": metrics.mean_standard_error(values)}


if __name__ == "__main__":
    CLI([train, evaluate], as_positional=False)
