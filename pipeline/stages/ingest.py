"""Step 1, ingest: resolve the corpus into one row per input video, read each video's container
metadata in Ray tasks (units of 4 x `segment.videos_per_part` videos, each writing its rows to
_videos/ and its marker: an ingest of a large corpus resumes after a crash); then a task writes
videos.parquet in the manifest's order (ok, or failed with the reason). Reused as it is when the
inputs and the clip settings are unchanged."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipeline import schemas
from pipeline.config import ConfigError
from pipeline.data.corpus import resolve_corpus
from pipeline.data.ingest import ingest_video, video_row
from pipeline.data.video import ClipSpec, DecodeLimits
from pipeline.orchestration.fanout import map_tasks
from pipeline.orchestration.runtime import Progress
from pipeline.params import ParameterError
from pipeline.run_folder import VIDEOS, RunFolder
from pipeline.stages.base import Job, one_at_a_time, per_second, unit_batches, unit_error

log = logging.getLogger("pipeline")

INGESTED = "_videos"  # each unit's videos.parquet rows, until videos.parquet is written


def run(job: Job) -> None:
    job.begin("ingest")
    c, folder = job.c, job.folder
    try:
        corpus = resolve_corpus(c["dataset"])
    except ParameterError as e:
        raise ConfigError.from_parameter("dataset", e) from None
    spec, limits = ClipSpec(**c["clip"]), DecodeLimits(**c["decode"])
    fingerprint = job.fingerprints["ingest"]
    ids = [r["video_id"] for r in corpus.rows]
    paths = [r["path"] for r in corpus.rows]
    if folder.exists(VIDEOS):
        previous = folder.read_videos(["video_id", "path"])
        same_inputs = ids == previous.column("video_id").to_pylist() and paths == previous.column("path").to_pylist()
        if same_inputs and folder.videos_fingerprint() == fingerprint:
            log.info("ingest: videos.parquet already covers these %d videos with these clip settings; reused",
                     len(ids))
            _count(job, _counts(folder.read_videos(["label", "status"])), reused=True)
            return
    log.info("ingest: %d videos in %d classes from %s", len(ids), len(corpus.classes),
             c["dataset"]["root"] or c["dataset"]["csv"] or "a list of files")
    done = folder.done_units("ingest", [INGESTED], fingerprint, "clip", stale="discard")
    have = set()
    if done.num_rows:
        got = folder.read(INGESTED, columns=["video_id", "path"])
        have = set(zip(got.column("video_id").to_pylist(), got.column("path").to_pylist()))
    todo = [r for r in corpus.rows if (r["video_id"], r["path"]) not in have]
    if have:
        log.info("ingest: %d videos already read by an earlier run, %d to go", len(ids) - len(todo), len(todo))
    units = {f"{n:05d}": rows for n, rows in enumerate(unit_batches(todo, int(c["segment"]["videos_per_part"]) * 4))}
    progress = Progress("ingest", len(todo))
    items = ((name, (folder, name, rows)) for name, rows in list(units.items()))
    for out in map_tasks(ingest_unit, items, spec, fingerprint, limits, progress=None, label_selector=job.cpu_selector,
                         timeout_s=limits.unit_timeout_s, split=one_at_a_time(folder, units, [INGESTED], by_row=True)):
        progress.update(len(units[out.key]))
        if not out.ok:
            rows = [video_row(r, spec, unit_error("ingest", out.error)) for r in units[out.key]]
            folder.write_unit("ingest", out.key, [(INGESTED, _rows_table(rows))],
                              [{"video_id": r["video_id"]} for r in rows], fingerprint)
    where = {"label_selector": job.cpu_selector} if job.cpu_selector else {}
    summary = ray.get(write_manifest.options(**where).remote(folder, ids, paths, fingerprint))
    for vid, why in summary.pop("failures"):
        log.warning("ingest: %s failed: %s", vid, why)
    _count(job, summary, reused=False)


@ray.remote(num_cpus=1, max_retries=2)
def write_manifest(folder: RunFolder, ids: list[str], paths: list[str], fingerprint: str) -> dict[str, Any]:
    """videos.parquet from the units' rows, in the manifest's order (in a task: in the driver,
    writing a 4,000-row table held 10 MB of its memory after it was written, bench/scale.py);
    returns its counts and failures."""
    table = folder.write_videos(manifest_order(folder.read(INGESTED), ids, paths), fingerprint)
    return {**_counts(table), "failures": [(r["video_id"], r["error"]) for r in table.filter(
        pc.equal(table.column("status"), schemas.FAILED)).select(["video_id", "error"]).to_pylist()]}


def ingest_unit(folder: RunFolder, unit: str, rows: list[dict[str, Any]], spec: ClipSpec,
                fingerprint: str, limits: DecodeLimits) -> int:
    """One unit (in a Ray task): each video's row from its container, written with the marker."""
    out = [ingest_video(r, spec, limits) for r in rows]
    folder.write_unit("ingest", unit, [(INGESTED, _rows_table(out))], [{"video_id": r["video_id"]} for r in out],
                      fingerprint)
    return len(out)


def _rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    for r in rows:
        r["failed_stage"] = "ingest" if r["status"] == schemas.FAILED else None
    return pa.Table.from_pylist(rows, schema=schemas.VIDEOS)


def manifest_order(table: pa.Table, ids: list[str], paths: list[str]) -> pa.Table:
    """The ingested rows of the manifest's videos, one each, in the manifest's order."""
    position = {(v, p): i for i, (v, p) in enumerate(zip(ids, paths))}
    keys = zip(table.column("video_id").to_pylist(), table.column("path").to_pylist())
    pos = np.asarray([position.get(k, -1) for k in keys], dtype=np.int64)
    keep = np.flatnonzero(pos >= 0)
    first = keep[np.unique(pos[keep], return_index=True)[1]]  # one row per manifest entry
    order = first[np.argsort(pos[first], kind="stable")]
    if len(order) != len(ids):
        raise RuntimeError(f"ingest: {len(ids) - len(order)} videos of the manifest have no ingested row")
    return table.take(pa.array(order))


def _counts(table: pa.Table) -> dict[str, int]:
    failed = pc.sum(pc.equal(table.column("status"), schemas.FAILED)).as_py() or 0
    return {"videos": table.num_rows, "failed": int(failed), "classes": len(pc.unique(table.column("label")))}


def _count(job: Job, counts: dict[str, int], reused: bool) -> None:
    n, failed = counts["videos"], counts["failed"]
    wall = job.wall("ingest")
    job.finish("ingest", reused=reused, videos_per_s=None if reused else per_second(n, wall),
               videos_in=n, videos_ok=n - failed, videos_failed=failed)
    job.counts.update(videos_in=n, videos_ok=n - failed, videos_failed=failed, classes=counts["classes"])
