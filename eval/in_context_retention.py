"""``hope eval in-context-retention`` as a script: ``python eval/in_context_retention.py --help``."""

import sys

from hope.evaluation.cli import main

if __name__ == "__main__":
    main(["in_context_retention", *sys.argv[1:]])
