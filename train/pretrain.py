"""Pretraining as a script, for those who prefer ``python train/pretrain.py`` to the ``hope`` command.

    python train/pretrain.py --config configs/pretrain/debug.yaml [--ckpt_path last]

Identical to ``hope fit ...``: the same LightningCLI, configs and checkpoints.
"""

import sys

from hope.cli import main

if __name__ == "__main__":
    main(["fit", *sys.argv[1:]])
