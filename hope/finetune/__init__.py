"""Finetuning (``hope finetune``) and the continual-learning methods HOPE is compared with.

``module.py`` the LightningModule, ``cli.py`` the command, ``params.py`` freezing and lr groups by name pattern,
``checkpoint.py`` starting weights and trainable-only checkpoints, ``data.py`` token blocks for methods,
``methods/`` one file per method (each also a ``ContinualMethod`` of the retention harness).
"""
