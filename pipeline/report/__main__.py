"""`python -m pipeline.report run_dir=...`: the command lives in `pipeline.commands.report`."""

import sys

from pipeline.commands.cli import run_module

if __name__ == "__main__":
    sys.exit(run_module("report", sys.argv[1:]))
