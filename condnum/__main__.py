"""``python -m condnum``: the command line (see :mod:`condnum.cli`)."""

import sys

from condnum.cli import main

sys.exit(main())
