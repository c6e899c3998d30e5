"""Step 2, segment: every ok video's clip into supervoxels (3D SLIC at several resolutions,
small and duplicate candidates dropped). One Ray CPU task per unit of up to
`segment.videos_per_part` videos decodes and segments them and writes the unit's parts itself:
supervoxels/ (every candidate, with its status) and label_volumes/, one row group per video,
then its marker. The driver sees only counts. A rerun skips the units already done."""

from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from pipeline import schemas
from pipeline.data.video import ClipSpec, DecodeLimits
from pipeline.orchestration.fanout import map_tasks
from pipeline.orchestration.runtime import Progress
from pipeline.params import from_section
from pipeline.run_folder import LABEL_VOLUMES, SUPERVOXELS, RunFolder
from pipeline.segmentation.supervoxels import DROPPED_DUPLICATE, DROPPED_SHORT, DROPPED_SMALL, KEPT, SegmentParams
from pipeline.segmentation.video import SegmentedVideo, segment_video
from pipeline.stages.base import (Job, VideoRows, candidates, fail_unit, failed_marker, identities, log_failures,
                                  one_at_a_time, per_second, unit_batches, unit_error, unit_failures)

log = logging.getLogger("pipeline")

STATUSES = (KEPT, DROPPED_SMALL, DROPPED_DUPLICATE, DROPPED_SHORT)
OUTPUTS = (SUPERVOXELS, LABEL_VOLUMES)


def run(job: Job) -> None:
    job.begin("segment")
    cfg, folder = job.cfg, job.folder
    spec, limits = cfg.clip, cfg.decode
    params = from_section(SegmentParams, cfg.segment)
    min_frames = job.window if cfg.segment.short_supervoxels == "drop" else None
    fingerprint = job.fingerprints["segment"]
    table = folder.read_videos()
    done = folder.done_units("segment", OUTPUTS, fingerprint, "clip/segment", videos=identities(table),
                             retry_failed=cfg.run.retry_failed)
    done_ids = set(done.column("video_id").to_pylist())
    videos = VideoRows(candidates(table))
    todo = [v for v in videos.ids if v not in done_ids]
    log.info("segment: %d videos to segment (%d already done), n_segments=%s", len(todo), len(done_ids),
             list(params.n_segments))

    units = {f"{n:05d}": ids for n, ids in enumerate(unit_batches(todo, cfg.segment.videos_per_part))}
    progress = Progress("segment", len(todo))
    stats = {"candidates": 0, **{k: 0 for k in STATUSES}}
    seconds: list[float] = []
    nodes: dict[str, int] = {}
    retried = 0
    items = ((name, (folder, name, videos.rows(ids))) for name, ids in list(units.items()))
    for out in map_tasks(segment_unit, items, spec, params, min_frames, fingerprint, limits, progress=None,
                         label_selector=job.cpu_selector, timeout_s=limits.unit_timeout_s,
                         split=one_at_a_time(folder, units, list(OUTPUTS))):
        ids = units[out.key]
        progress.update(len(ids))
        retried += out.attempts > 1
        if not out.ok:  # one video whose task died (twice retried) or ran past its time limit
            fail_unit(folder, "segment", out.key, videos.rows(ids), unit_error("segmentation", out.error),
                      fingerprint)
            continue
        nodes[out.node] = nodes.get(out.node, 0) + len(ids)
        for k, v in out.value["stats"].items():
            stats[k] += v
        seconds += out.value["seconds"]
    failures = unit_failures(folder, "segment")
    new_failures = log_failures("segment", failures, todo)
    job.record_failures(failures, "segment")
    segmented = len(todo) - new_failures
    job.finish("segment", videos_segmented=segmented, videos_skipped_done=len(done_ids),
               videos_failed=new_failures, videos_retried=folder.redone["segment"]["videos_retried"],
               units=len(units), units_retried=retried,
               videos_per_s=per_second(segmented, job.wall("segment")),
               seconds_per_clip_in_task=round(float(np.mean(seconds)), 4) if seconds else None,
               n_segments=list(params.n_segments), supervoxels=stats,
               kept_per_video=round(stats[KEPT] / segmented, 2) if segmented else None, videos_per_node=nodes)
    if segmented or done_ids:  # counted in a streaming scan: the driver never holds the column
        job.counts["supervoxels_kept"] = folder.count_equal(SUPERVOXELS, "status", KEPT)


def segment_unit(folder: RunFolder, unit: str, rows: list[dict[str, Any]], spec: ClipSpec, params: SegmentParams,
                 min_frames: Optional[int], fingerprint: str, limits: DecodeLimits) -> dict[str, Any]:
    """One unit (in a Ray task): segment its videos, write their supervoxels and label volumes
    (one row group per video) and the unit's marker; return the counts."""
    results: list[SegmentedVideo] = []
    markers: list[dict[str, Any]] = []
    for row in rows:
        try:
            res = segment_video(row, spec, params, min_frames, limits)
        except Exception as e:  # a video that cannot be read or segmented fails alone
            markers.append(failed_marker(row, "segmentation", e))
            continue
        markers.append({"video_id": row["video_id"], "row_group": len(results), "identity": row.get("identity")})
        results.append(res)
    stats = {"candidates": 0, **{k: 0 for k in STATUSES}}
    for res in results:
        status = res.table["status"]
        stats["candidates"] += len(status)
        for key in STATUSES:
            stats[key] += int((status == key).sum())
    outputs = segment_tables(results, params.n_segments) if results else []
    folder.write_unit("segment", unit, outputs, markers, fingerprint)
    return {"stats": stats, "seconds": [r.seconds for r in results]}


def segment_tables(results: list[SegmentedVideo], n_segments: list[int]) -> list[tuple[str, list[pa.Table]]]:
    """A unit's parts: the label volumes, then the supervoxel table, each a row group per video."""
    label_groups, sv_groups = [], []
    for res in results:
        lv: dict[str, list] = {name: [] for name in schemas.LABEL_VOLUMES.names}
        for r in range(res.labels.shape[0]):
            lv["video_id"].append(res.video_id)
            lv["resolution"].append(r)
            lv["n_segments"].append(n_segments[r])
            lv["shape"].append(list(res.labels.shape[1:]))
            lv["labels"].append(np.ascontiguousarray(res.labels[r], dtype=np.uint16).tobytes())
        label_groups.append(pa.table(lv, schema=schemas.LABEL_VOLUMES))
        n = len(res.table["supervoxel_id"])
        cols = {"video_id": pa.array([res.video_id] * n, type=pa.string()),
                "n_segments": pa.array(np.asarray(n_segments, dtype=np.int32)[res.table["resolution"]])}
        for name in schemas.SUPERVOXELS.names:
            if name not in cols:
                cols[name] = pa.array(res.table[name], type=schemas.SUPERVOXELS.field(name).type)
        sv_groups.append(pa.table({k: cols[k] for k in schemas.SUPERVOXELS.names}, schema=schemas.SUPERVOXELS))
    return [(LABEL_VOLUMES, label_groups), (SUPERVOXELS, sv_groups)]
