"""The report stage: report/index.html, the run as a person reads it (`pipeline.report`):
concept cards with looping exemplar clips, the deletion/insertion curves, voxel-importance heat
maps; one Ray task renders each class."""

from __future__ import annotations

import logging

from pipeline.report.build import build_report
from pipeline.stages.base import Job, driver_peak_rss_mb

log = logging.getLogger("pipeline")


def run(job: Job) -> None:
    out = build_report(job.folder, job.c, job.record)
    job.record["stages"]["report"] = {**out, "driver_peak_rss_mb": driver_peak_rss_mb()}
    log.info("report: %s (%d classes, %d images)", out["path"], out["classes"], out["assets"])
