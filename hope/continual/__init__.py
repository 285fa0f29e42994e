"""Continual learning in the core (no Lightning, no evaluation): the ``ContinualMethod`` interface and its ``Task``
(``method.py``), the finetuning methods' base class and task loop (``finetune.py``), parameter selection by name
pattern (``params.py``), and the methods themselves (``methods/``). ``hope finetune`` (Lightning) and ``hope eval
retention`` (the harness) both build on it."""
