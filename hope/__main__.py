"""``python -m hope``: the ``hope`` command line, the same as the console script."""

from hope.cli import main

main()
