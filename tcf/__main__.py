"""``python -m tcf``: the command line, for launchers that run a module (``torchrun -m tcf train ...``)."""

import sys

from tcf.cli import main

if __name__ == "__main__":
    sys.exit(main())
