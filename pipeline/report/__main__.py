"""`python -m pipeline.report run_dir=...`: the command lives in `pipeline.commands.report`."""

import sys

from pipeline.commands.report import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
