"""lm-evaluation-harness with the ``hope`` model registered (``hope eval lm-eval`` as a script)::

    python eval/harness.py --model hope --model_args checkpoint=runs/debug/checkpoints/last.ckpt --tasks wikitext

Named ``harness.py``, not ``lm_eval.py``: a script's folder comes first on ``sys.path`` and would shadow lm-eval.
"""

import sys

from hope.evaluation.cli import main

if __name__ == "__main__":
    main(["lm-eval", *sys.argv[1:]])
