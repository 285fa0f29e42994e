"""Sequential-task continual learning, measured (``hope eval retention``): task suites, their test sets, and the
harness that runs a ``hope.continual`` method through them and reports the retention matrix."""

from hope.evaluation.retention.classification import ClassIncremental
from hope.evaluation.retention.domains import DomainSequence, LocalDomains
from hope.evaluation.retention.facts import SyntheticFacts
from hope.evaluation.retention.harness import run_retention, write_outputs
from hope.evaluation.retention.tasks import CandidateRanking, HeldOutPerplexity, QAItem, TaskSuite

__all__ = [
    "CandidateRanking",
    "ClassIncremental",
    "DomainSequence",
    "HeldOutPerplexity",
    "LocalDomains",
    "QAItem",
    "SyntheticFacts",
    "TaskSuite",
    "run_retention",
    "write_outputs",
]
