"""Full finetuning: every parameter trains (minus the run's ``freeze``/``train_only`` patterns) with AdamW.

The forgetting baseline of every continual-learning comparison (SMF §5: NQ F1 drops 89% at equal TriviaQA
learning). It is ``FinetuneMethod`` itself under its own name, so ``method: hope.continual.methods.FullFinetune``
reads as what it is. ``EpochFinetune`` is the same method under the retention harness's earlier name, with the
``TaskLoop`` settings as flat arguments (``hope eval retention --method EpochFinetune --method.lr 3e-4``).
"""

import dataclasses

from hope.continual.finetune import FinetuneMethod, TaskLoop


class FullFinetune(FinetuneMethod):
    """Every trainable parameter is updated by AdamW; no penalty, no replay, no adapters.

    Args:
        loop: how ``learn`` trains on a task of the retention harness.
    """

    name = "full"


class EpochFinetune(FullFinetune):
    """``FullFinetune`` with its ``loop`` settings as flat arguments: ``--method EpochFinetune --method.lr 3e-4`` is
    ``--method FullFinetune --method.loop.lr 3e-4``. The default method of ``hope eval retention``.

    Args:
        lr: learning rate. 1e-3 suits the ~3M-parameter debug models; use ~1e-5 to 5e-5 for large ones.
        epochs: passes over each task's training text.
        batch_size: sequences per step.
        seq_len: tokens per sequence (at most the model's ``max_seq_len``).
        weight_decay: AdamW weight decay of matrices.
        grad_clip: max gradient norm (0: no clipping).
        seed: order of the texts in each epoch.
    """

    name = "finetune"

    def __init__(
        self,
        lr: float = TaskLoop.lr,
        epochs: int = TaskLoop.epochs,
        batch_size: int = TaskLoop.batch_size,
        seq_len: int = TaskLoop.seq_len,
        weight_decay: float = TaskLoop.weight_decay,
        grad_clip: float = TaskLoop.grad_clip,
        seed: int = TaskLoop.seed,
    ) -> None:
        super().__init__(TaskLoop(lr, epochs, batch_size, seq_len, weight_decay, grad_clip, seed))

    def config(self) -> dict:
        """The flat ``TaskLoop`` arguments, as they were given."""
        return dataclasses.asdict(self.loop)  # the flat arguments, as they were given
