"""Step 1, ingest: resolve the corpus into one row per input video, decode every clip once in
Ray tasks, and write videos.parquet (ok, or failed with the reason). Reused as it is when the
inputs and the clip settings are unchanged."""

from __future__ import annotations

import logging
from typing import Any

from pipeline import schemas
from pipeline.config import ConfigError
from pipeline.data.corpus import resolve_corpus
from pipeline.data.ingest import ingest_video, video_row
from pipeline.data.video import ClipSpec
from pipeline.orchestration.fanout import map_tasks
from pipeline.orchestration.runtime import Progress
from pipeline.params import ParameterError
from pipeline.run_folder import VIDEOS
from pipeline.stages.base import Job, per_second

log = logging.getLogger("pipeline")


def run(job: Job) -> None:
    job.begin("ingest")
    c, folder = job.c, job.folder
    try:
        corpus = resolve_corpus(c["dataset"])
    except ParameterError as e:
        raise ConfigError.from_parameter("dataset", e) from None
    spec = ClipSpec(**c["clip"])
    fingerprint = job.fingerprints["ingest"]
    if folder.exists(VIDEOS):
        previous = folder.read(VIDEOS)
        same_inputs = [(r["video_id"], r["path"]) for r in corpus.rows] == list(
            zip(previous.column("video_id").to_pylist(), previous.column("path").to_pylist()))
        if same_inputs and (previous.schema.metadata or {}).get(b"settings", b"").decode() == fingerprint:
            log.info("ingest: videos.parquet already covers these %d videos with these clip settings; reused",
                     len(corpus.rows))
            _count(job, previous.to_pylist(), reused=True)
            return
    log.info("ingest: %d videos in %d classes from %s", len(corpus.rows), len(corpus.classes),
             c["dataset"]["root"] or c["dataset"]["csv"] or "a list of files")
    manifest = {r["video_id"]: r for r in corpus.rows}
    by_id: dict[str, dict[str, Any]] = {}
    for out in map_tasks(ingest_video, ((r["video_id"], (r,)) for r in corpus.rows), spec,
                         progress=Progress("ingest", len(corpus.rows)), label_selector=job.cpu_selector):
        by_id[out.key] = out.value if out.ok else video_row(manifest[out.key], spec, f"ingest failed: {out.error}")
    rows = [by_id[r["video_id"]] for r in corpus.rows]  # manifest order, whatever finished first
    for r in rows:
        r["failed_stage"] = "ingest" if r["status"] == schemas.FAILED else None
        if r["status"] == schemas.FAILED:
            log.warning("ingest: %s failed: %s", r["video_id"], r["error"])
    folder.write_videos(rows, fingerprint)
    _count(job, rows, reused=False)


def _count(job: Job, rows: list[dict[str, Any]], reused: bool) -> None:
    failed = sum(r["status"] == schemas.FAILED for r in rows)
    wall = job.wall("ingest")
    job.finish("ingest", reused=reused, videos_per_s=None if reused else per_second(len(rows), wall),
               videos_in=len(rows), videos_ok=len(rows) - failed, videos_failed=failed)
    job.counts.update(videos_in=len(rows), videos_ok=len(rows) - failed, videos_failed=failed,
                      classes=len({r["label"] for r in rows}))
