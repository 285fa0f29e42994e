"""Callbacks the CLI adds by default."""

import os
import sys

from lightning.pytorch.callbacks import TQDMProgressBar


class ProgressBar(TQDMProgressBar):
    """TQDM progress bar that refreshes every step on a terminal and every ``log_refresh_rate`` steps otherwise,
    so SLURM log files get a line every so often instead of thousands of carriage-return updates.
    ``HOPE_PROGRESS_REFRESH`` overrides both."""

    def __init__(self, log_refresh_rate: int = 50) -> None:
        env = os.environ.get("HOPE_PROGRESS_REFRESH")
        rate = int(env) if env else (1 if sys.stdout.isatty() else log_refresh_rate)
        super().__init__(refresh_rate=rate)
