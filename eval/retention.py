"""``hope eval retention`` as a script: ``python eval/retention.py --help`` (the code is in ``hope.evaluation``)."""

import sys

from hope.evaluation.cli import main

if __name__ == "__main__":
    main(["retention", *sys.argv[1:]])
