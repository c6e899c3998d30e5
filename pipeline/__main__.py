"""`python -m pipeline`: the main job, `ace3d run` (see pipeline/job.py and conf/config.yaml)."""

import sys

from pipeline.commands.cli import run_module

if __name__ == "__main__":
    sys.exit(run_module("run", sys.argv[1:]))
