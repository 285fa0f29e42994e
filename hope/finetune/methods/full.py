"""Full finetuning: every parameter trains (minus the run's ``freeze``/``train_only`` patterns) with AdamW.

The forgetting baseline of every continual-learning comparison (SMF §5: NQ F1 drops 89% at equal TriviaQA
learning). It is ``FinetuneMethod`` itself under its own name, so ``method: hope.finetune.methods.FullFinetune``
reads as what it is.
"""

from hope.finetune.methods.base import FinetuneMethod


class FullFinetune(FinetuneMethod):
    """Every trainable parameter is updated by AdamW; no penalty, no replay, no adapters.

    Args:
        loop: how ``learn`` trains on a task of the retention harness.
    """

    name = "full"
