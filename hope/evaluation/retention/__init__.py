"""Sequential-task continual learning: tasks, suites, methods and the harness (``hope eval retention``)."""

from hope.evaluation.retention.classification import ClassIncremental
from hope.evaluation.retention.domains import DomainSequence
from hope.evaluation.retention.facts import SyntheticFacts
from hope.evaluation.retention.harness import run_retention, write_outputs
from hope.evaluation.retention.methods import ContinualMethod, EpochFinetune, InContext
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
    "CandidateRanking", "ClassIncremental", "ContinualMethod", "DomainSequence", "EvalContext", "EpochFinetune",
    "HeldOutPerplexity", "InContext", "QAItem", "SyntheticFacts", "Task", "TaskSuite", "TestSet", "run_retention",
    "write_outputs",
]
