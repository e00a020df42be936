"""``python -m resetax_cli``: the ``resetax`` command."""

import sys

from resetax_cli import main

sys.exit(main())
