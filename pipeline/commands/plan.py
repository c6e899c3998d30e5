"""`ace3d plan [the run's overrides] [sample=6]`: what the run those overrides describe will
cost, before it runs (`pipeline.planning`), printed as a table and written to
`<run.output_dir>/plan.json` (or `output=<file>`)."""

from __future__ import annotations

import logging
import os
import sys

from pipeline import io
from pipeline.config import ConfigError

OWN_KEYS = ("sample=", "output=")


def main(argv: list[str]) -> int:
    from hydra.errors import HydraException

    from pipeline.commands.cli import composed
    from pipeline.config import to_plain, validate
    from pipeline.job import absolutise
    from pipeline.planning import plan_run, plan_table

    logging.basicConfig(level=logging.WARNING)
    own = dict(a.split("=", 1) for a in argv if a.startswith(OWN_KEYS))
    overrides = [a for a in argv if not a.startswith(OWN_KEYS)]
    try:
        try:
            sample = int(own.get("sample", 6))
        except ValueError:
            raise ConfigError("sample", "must be an integer", own["sample"]) from None
        if sample < 1:
            raise ConfigError("sample", "must be >= 1", sample)
        cfg = composed("config", overrides)
        validate(cfg)
        absolutise(cfg)
        c = to_plain(cfg)
        plan = plan_run(c, sample)
    except (ConfigError, FileNotFoundError, HydraException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = own.get("output") or io.join(c["run"]["output_dir"], "plan.json")
    out = out if io.is_uri(out) else os.path.abspath(out)
    io.write_json(plan, out)  # its folder made as needed
    print(plan_table(plan))
    print(f"plan: {out}")
    return 0


if __name__ == "__main__":
    from pipeline.commands.cli import run_module

    sys.exit(run_module("plan", sys.argv[1:]))
