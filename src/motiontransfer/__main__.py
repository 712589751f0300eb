"""`python -m motiontransfer ...`: the same as the `motiontransfer` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
