"""`python -m pipeline.atlas query ...`: the command lives in `pipeline.commands.atlas`."""

import sys

from pipeline.commands.cli import run_module

if __name__ == "__main__":
    sys.exit(run_module("atlas", sys.argv[1:]))
