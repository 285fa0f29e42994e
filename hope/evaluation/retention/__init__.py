"""Sequential-task continual learning: tasks, suites, methods and the harness (``hope eval retention``)."""

from hope.evaluation.retention.classification import ClassIncremental
from hope.evaluation.retention.domains import DomainSequence
from hope.evaluation.retention.facts import SyntheticFacts
from hope.evaluation.retention.harness import run_retention, write_outputs
from hope.evaluation.retention.methods import ContinualMethod, InContext
from hope.evaluation.retention.tasks import (
    CandidateRanking,
    EvalContext,
    HeldOutPerplexity,
    QAItem,
    Task,
    TaskSuite,
    TestSet,
)

__all__ = [
    "CandidateRanking",
    "ClassIncremental",
    "ContinualMethod",
    "DomainSequence",
    "EvalContext",
    "EpochFinetune",
    "HeldOutPerplexity",
    "InContext",
    "QAItem",
    "SyntheticFacts",
    "Task",
    "TaskSuite",
    "TestSet",
    "run_retention",
    "write_outputs",
]


def __getattr__(name: str):
    # EpochFinetune is hope.finetune.methods' full finetuning, whose base class imports this package: import on use
    if name == "EpochFinetune":
        from hope.finetune.methods import EpochFinetune

        return EpochFinetune
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
