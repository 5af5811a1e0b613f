"""``python -m edgec``: the command line, as the ``edgec`` script runs it."""

from .cli import main

main()
