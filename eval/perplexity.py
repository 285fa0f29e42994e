"""``hope eval perplexity`` as a script: ``python eval/perplexity.py --help`` (the code is in ``hope.evaluation``)."""

import sys

from hope.evaluation.cli import main

if __name__ == "__main__":
    main(["perplexity", *sys.argv[1:]])
