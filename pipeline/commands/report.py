"""`ace3d report run_dir=<run folder> [report.<key>=<value> ...]` (or `python -m pipeline.report`):
remake a run's report with other settings, without running anything else."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from pipeline import io
from pipeline.commands.cli import COMMANDS
from pipeline.config import ConfigError, check_group
from pipeline.report.params import ReportParams
from pipeline.lease import Lease, LeaseError, new_run_id
from pipeline.run_folder import RUN_JSON, RunFolder, RunFolderError
from pipeline.stages.report import build_report

USAGE = COMMANDS["report"].usage


def report_settings(*layers: Any) -> dict[str, Any]:
    """ReportParams's defaults with `layers` merged on top, checked (a bad key fails naming it)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(OmegaConf.structured(ReportParams), *layers)
    except OmegaConfBaseException as e:
        if getattr(e, "key", None):
            raise ConfigError(f"report.{e.key}", e.msg.splitlines()[0]) from None
        raise ConfigError("report", str(e)) from None
    check_group("report", OmegaConf.to_object(merged))
    return OmegaConf.to_container(merged)  # type: ignore[return-value]


def main(argv: list[str]) -> int:
    from omegaconf import OmegaConf

    from pipeline.orchestration.runtime import init_ray

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        bad = [a for a in argv if "=" not in a]
        if bad:
            raise ConfigError(bad[0], f"arguments are key=value overrides (usage: {USAGE})")
        cli = OmegaConf.from_dotlist(argv)
        run_dir = cli.pop("run_dir", None)
        if not run_dir:
            raise ConfigError("run_dir", f"is missing: {USAGE}")
        run_dir = str(run_dir) if io.is_uri(str(run_dir)) else os.path.abspath(str(run_dir))
        unknown = [k for k in cli if k != "report"]
        if unknown:
            raise ConfigError(str(unknown[0]), "unknown; known: run_dir, report.*")
        overrides = cli.get("report") or {}
        report_settings(overrides)  # a bad key fails before anything is read
        run_id = new_run_id()
        folder = RunFolder(run_dir, run_id)
        if not folder.exists(RUN_JSON):
            raise RunFolderError(f"{run_dir} is not a run folder (no {RUN_JSON})")
        record = io.read_json(folder.path(RUN_JSON))
        c = record["config"]
        c["report"] = report_settings(c.get("report") or {}, overrides)
        with Lease(run_dir, run_id) as lease:
            folder.lease = lease
            init_ray({**c.get("ray", {}), "address": None})
            out = build_report(folder, c, record)
    except (ConfigError, RunFolderError, LeaseError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {out['path']} ({out['classes']} classes, {out['assets']} images, {out['wall_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
