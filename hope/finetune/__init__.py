"""``hope finetune``: the Lightning side of finetuning. ``module.py`` is the LightningModule (a method, freezing,
per-group lrs, memory layers, trainable-only checkpoints) and ``cli.py`` the command. The methods themselves, their
parameter selection and their optimizers live in the core, ``hope.continual``."""
