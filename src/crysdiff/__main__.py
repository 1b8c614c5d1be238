"""``python -m crysdiff``: the same command line as the ``crysdiff`` script."""

import sys

from crysdiff.cli import main

if __name__ == "__main__":
    sys.exit(main())
