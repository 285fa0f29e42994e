"""Finetuning (``hope finetune``) and the continual-learning methods HOPE is compared with.

``module.py`` the LightningModule, ``cli.py`` the command, ``params.py`` freezing and lr groups by name pattern,
``optim.py`` the run's optimizer (CMS level periods kept for HOPE), ``checkpoint.py`` starting weights and
trainable-only checkpoints, ``data.py`` token blocks for methods, ``methods/`` one file per method (each also a
``ContinualMethod`` of the retention harness), ``compare.py`` the comparison on the synthetic facts.
"""
