"""`python -m pipeline.atlas query ...`: the command lives in `pipeline.commands.atlas`."""

import sys

from pipeline.commands.atlas import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
