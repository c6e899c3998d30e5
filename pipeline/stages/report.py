"""The report stage: report/index.html, the run as a person reads it (`pipeline.report`):
concept cards with looping exemplar clips, the deletion/insertion curves, voxel-importance heat
maps. Its scheduling: one Ray task renders each class (`pipeline.report.build.render_unit`), one
the atlas page, one a scored folder's page (`pipeline.score`); the driver writes index.html."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pyarrow.compute as pc

from pipeline import schemas
from pipeline.orchestration.fanout import map_tasks
from pipeline.orchestration.runtime import Progress
from pipeline.report.atlas_page import atlas_unit
from pipeline.report.build import render_unit, report_fingerprint
from pipeline.report.page import FAILED_SHOWN, index_html
from pipeline.report.render import ClassSection
from pipeline.report.scored_page import MAX_VIDEOS, render_scored
from pipeline.run_folder import (ATLAS_MANIFEST, CONCEPT_METRICS, CONCEPTS, EVALUATE_METRICS, REPORT,
                                 REPORT_ATLAS, REPORT_CLASSES, REPORT_INDEX, RunFolder, RunFolderError)
from pipeline.stages.base import Job, driver_peak_rss_mb

log = logging.getLogger("pipeline")


def run(job: Job) -> None:
    out = build_report(job.folder, job.c, job.record)
    job.record["stages"]["report"] = {**out, "driver_peak_rss_mb": driver_peak_rss_mb()}
    log.info("report: %s (%d classes, %d images)", out["path"], out["classes"], out["assets"])


def build_report(folder: RunFolder, c: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """Write report/index.html and its images (report/assets/); returns counts for run.json.
    One Ray task per class reads that class's rows, renders it and writes its images; a rerun
    over the same results with the same report settings reuses the classes already rendered.
    The figures shown come from the run's tables (concepts.parquet and its view, metrics/,
    evaluation/, the atlas's); `record` (the run record) gives the page's header only: the
    run's command, settings, timings and counts."""
    t0 = time.monotonic()
    if not folder.exists(CONCEPTS):
        raise RunFolderError(f"the report needs {CONCEPTS} in {folder.root}: run the concepts stage first")
    concepts = folder.concept_view([n for n in schemas.CONCEPT_VIEW.names if n != "centroid"]).to_pylist()
    class_info = {k: {**figures.get(None, {}), "layers": {lay: f for lay, f in figures.items() if lay is not None}}
                  for k, figures in folder.metrics(CONCEPT_METRICS).items()}
    evaluated = folder.metrics(EVALUATE_METRICS)
    classes = list(dict.fromkeys([*class_info, *(r["target_class"] for r in concepts)]))
    by_class: dict[str, list[dict[str, Any]]] = {}
    for r in concepts:
        by_class.setdefault(r["target_class"], []).append(r)
    pages = len(classes) > int(c["report"]["class_pages"])  # a page per class behind the index
    report = {k: v for k, v in c["report"].items() if k != "class_pages"}  # `pages` says it
    settings = {"report": report, "clip": c["clip"], "dataset_kind": c["dataset"]["kind"],
                "dataset_root": c["dataset"]["root"], "dataset_name": c["dataset"]["name"],
                "model_name": c["model"]["name"], "pages": pages, "atlas": folder.exists(ATLAS_MANIFEST)}
    fingerprint = report_fingerprint(settings, concepts, class_info, evaluated, classes)
    done = folder.done_units("report", [], fingerprint, "report", stale="discard")
    sections = {r["class"]: r for r in map(json.loads, done.column("record").to_pylist())}
    if not sections:  # images and pages of an earlier report (other settings, other concepts) go
        folder.clear(f"{REPORT}/assets")
        folder.clear(REPORT_CLASSES)
    todo = [(i, k) for i, k in enumerate(classes) if k not in sections]
    items = ((k, (folder, i, k, settings, class_info.get(k, {}), evaluated.get(k, {}), by_class.get(k, []),
                  fingerprint)) for i, k in todo)
    for out in map_tasks(render_unit, items, progress=Progress("report", len(todo), unit="classes"),
                         on_error="report: class"):
        sections[out.key] = out.value
    shown = [ClassSection(index=r["index"], target_class=r["class"], html=r["html"], files={}, summary=r["summary"])
             for r in sorted(sections.values(), key=lambda r: r["index"])]
    atlas = None
    if settings["atlas"]:  # the atlas page: one task, remade with the report
        for out in map_tasks(atlas_unit, [("atlas page", (folder, settings))], progress=None,
                             on_error="report: the"):
            atlas = out.value
    videos = folder.read_videos(["video_id", "status", "failed_stage", "error"])
    failed = videos.filter(pc.equal(videos.column("status"), schemas.FAILED))
    page = index_html(folder.root, c, record, shown, failed.slice(0, FAILED_SHOWN).to_pylist(), videos.num_rows,
                      atlas=atlas is not None, n_failed=failed.num_rows, pages=pages)
    folder.write_bytes(REPORT_INDEX, page.encode())
    return {"wall_s": round(time.monotonic() - t0, 3), "classes": len(shown),
            "classes_skipped_done": len(classes) - len(todo), "assets": sum(r["files"] for r in sections.values()),
            "class_pages": pages, "path": folder.path(REPORT_INDEX),
            **({"atlas_page": folder.path(REPORT_ATLAS)} if atlas else {})}


def build_scored_report(folder: RunFolder, c: dict[str, Any], record: dict[str, Any], source_root: str
                        ) -> dict[str, Any]:
    """A scored folder's report/index.html (`pipeline.score`): one Ray task renders the page of
    a few videos per class (the score step's `examples`); the driver writes what it returns."""
    t0 = time.monotonic()
    examples = record["stages"]["score"]["examples"]
    picks = [(k, v) for k, vids in examples.items() for v in vids[: int(c["report"]["heatmap_videos"])]]
    settings = {"report": c["report"], "clip": c["clip"]}
    page = ("scored videos' page", (folder, settings, picks[:MAX_VIDEOS], record, source_root))
    html, files = next(map_tasks(render_scored, [page], progress=None, on_error="report: the")).value
    for rel, data in files.items():
        folder.write_bytes(f"{REPORT}/{rel}", data)
    folder.write_bytes(REPORT_INDEX, html.encode())
    return {"wall_s": round(time.monotonic() - t0, 3), "videos": len(picks[:MAX_VIDEOS]), "assets": len(files),
            "path": folder.path(REPORT_INDEX)}
