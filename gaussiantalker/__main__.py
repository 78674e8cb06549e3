"""``python -m gaussiantalker``: the command line (see :mod:`gaussiantalker.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
