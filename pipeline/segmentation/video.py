"""Segmentation of one video: decode its clip, segment it, return compact rows.

A pure function of (videos.parquet row, clip spec, segmentation params); the Ray layer fans
it out. The result carries the label volumes (small ints) and the supervoxel table, never a
per-supervoxel mask or patch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from pipeline.data.ingest import read_ingested_clip
from pipeline.data.video import ClipSpec, DecodeLimits
from pipeline.segmentation.supervoxels import SegmentParams, segment_clip


@dataclass
class SegmentedVideo:
    video_id: str
    labels: np.ndarray  # uint16 [R, L, H, W]
    table: dict[str, np.ndarray]
    seconds: float


def segment_video(row: dict[str, Any], spec: ClipSpec, params: SegmentParams,
                  min_frames: Optional[int], limits: Optional[DecodeLimits] = None) -> SegmentedVideo:
    """Decode the clip of one `ok` video and segment it (supervoxels shorter than `min_frames`
    marked `dropped_short`). Raises for a video that cannot be read or segmented."""
    t0 = time.perf_counter()
    clip = read_ingested_clip(row, spec, limits)
    seg = segment_clip(clip.frames, params, min_frames=min_frames)
    return SegmentedVideo(row["video_id"], labels=seg.labels, table=seg.table, seconds=time.perf_counter() - t0)
