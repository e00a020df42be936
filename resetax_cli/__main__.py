"""``python -m resetax_cli``: the ``resetax`` command."""

from resetax_cli import main

main()
