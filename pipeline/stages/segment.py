"""Step 2, segment: every ok video's clip into supervoxels (3D SLIC at several resolutions,
small and duplicate candidates dropped), one Ray CPU task per video, written in parts of
`segment.videos_per_part` videos: supervoxels/ (every candidate, with its status) and
label_volumes/. A rerun skips the videos already done."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schemas
from pipeline.data.video import ClipSpec
from pipeline.orchestration.fanout import map_tasks
from pipeline.orchestration.runtime import Progress
from pipeline.params import from_section
from pipeline.run_folder import LABEL_VOLUMES, SUPERVOXELS
from pipeline.segmentation.supervoxels import DROPPED_DUPLICATE, DROPPED_SHORT, DROPPED_SMALL, KEPT, SegmentParams
from pipeline.segmentation.video import SegmentedVideo, segment_video
from pipeline.stages.base import Job, per_second

log = logging.getLogger("pipeline")


def run(job: Job) -> None:
    job.begin("segment")
    c, folder = job.c, job.folder
    rows = folder.read_videos()
    spec = ClipSpec(**c["clip"])
    params = from_section(SegmentParams, c["segment"])
    min_frames = job.window if c["segment"]["short_supervoxels"] == "drop" else None
    fingerprint = job.fingerprints["segment"]
    # The supervoxel part of a batch is written after its label-volume part: it marks the batch done.
    done = folder.done_videos(SUPERVOXELS, [LABEL_VOLUMES], fingerprint, "clip/segment")
    todo = [r for r in rows if r["status"] == schemas.OK and r["video_id"] not in done]
    log.info("segment: %d videos to segment (%d already done), n_segments=%s", len(todo), len(done),
             list(params.n_segments))

    per_part = int(c["segment"]["videos_per_part"])
    buffer: list[SegmentedVideo] = []
    failures: dict[str, str] = {}
    stats = {"candidates": 0, KEPT: 0, DROPPED_SMALL: 0, DROPPED_DUPLICATE: 0, DROPPED_SHORT: 0}
    seconds: list[float] = []
    nodes: dict[str, int] = {}
    for out in map_tasks(segment_video, ((r["video_id"], (r,)) for r in todo), spec, params, min_frames,
                         progress=Progress("segment", len(todo)), label_selector=job.cpu_selector):
        if not out.ok:
            failures[out.key] = f"segmentation failed: {out.error}"
            log.warning("segment: %s failed: %s", out.key, failures[out.key])
            continue
        nodes[out.node] = nodes.get(out.node, 0) + 1
        result = out.value
        seconds.append(result.seconds)
        status = result.table["status"]
        stats["candidates"] += len(status)
        for key in (KEPT, DROPPED_SMALL, DROPPED_DUPLICATE, DROPPED_SHORT):
            stats[key] += int((status == key).sum())
        buffer.append(result)
        if len(buffer) >= per_part:
            folder.write_parts(segment_tables(buffer, params.n_segments), fingerprint)
            buffer = []
    if buffer:
        folder.write_parts(segment_tables(buffer, params.n_segments), fingerprint)
    job.record_failures(failures, "segment")
    segmented = len(todo) - len(failures)
    job.finish("segment", videos_segmented=segmented, videos_skipped_done=len(done), videos_failed=len(failures),
               videos_per_s=per_second(segmented, job.wall("segment")),
               seconds_per_clip_in_task=round(float(np.mean(seconds)), 4) if seconds else None,
               n_segments=list(params.n_segments), supervoxels=stats,
               kept_per_video=round(stats[KEPT] / segmented, 2) if segmented else None, tasks_per_node=nodes)
    if segmented or done:
        status = folder.read(SUPERVOXELS, columns=["status"]).column("status")
        job.counts["supervoxels_kept"] = int(pc.sum(pc.equal(status, KEPT)).as_py() or 0)


def segment_tables(results: list[SegmentedVideo], n_segments: list[int]) -> list[tuple[str, pa.Table]]:
    """One part: the label volumes, then the supervoxel table (the batch's marker), of a batch
    of segmented videos."""
    lv_rows: dict[str, list] = {name: [] for name in schemas.LABEL_VOLUMES.names}
    sv_cols: dict[str, list] = {name: [] for name in schemas.SUPERVOXELS.names}
    for res in results:
        for r in range(res.labels.shape[0]):
            lv_rows["video_id"].append(res.video_id)
            lv_rows["resolution"].append(r)
            lv_rows["n_segments"].append(n_segments[r])
            lv_rows["shape"].append(list(res.labels.shape[1:]))
            lv_rows["labels"].append(np.ascontiguousarray(res.labels[r], dtype=np.uint16).tobytes())
        n = len(res.table["supervoxel_id"])
        sv_cols["video_id"].append(np.full(n, res.video_id, dtype=object))
        sv_cols["n_segments"].append(np.asarray(n_segments, dtype=np.int32)[res.table["resolution"]])
        for name in schemas.SUPERVOXELS.names:
            if name not in ("video_id", "n_segments"):
                sv_cols[name].append(res.table[name])
    supervoxels = pa.table({k: pa.array(np.concatenate(v), type=schemas.SUPERVOXELS.field(k).type)
                            for k, v in sv_cols.items()}, schema=schemas.SUPERVOXELS)
    return [(LABEL_VOLUMES, pa.table(lv_rows, schema=schemas.LABEL_VOLUMES)), (SUPERVOXELS, supervoxels)]
