"""``hope eval recall`` as a script: ``python eval/recall.py --help`` (the code is in ``hope.evaluation``)."""

import sys

from hope.evaluation.cli import main

if __name__ == "__main__":
    main(["recall", *sys.argv[1:]])
