"""Segmentation of one video: decode its clip, segment it, return compact rows.

A pure function of (videos.parquet row, clip spec, segmentation params); the Ray layer fans
it out. The result carries the label volumes (small ints) and the supervoxel table, never a
per-supervoxel mask or patch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np

from pipeline.data.video import ClipSpec, read_clip
from pipeline.segmentation.supervoxels import segment_clip


@dataclass(frozen=True)
class SegmentParams:
    """Mirrors `SegmentConfig` (see there for units and defaults)."""

    n_segments: tuple[int, ...] = (15, 50, 80)
    compactness: float = 20.0
    sigma: float = 1.0
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    min_volume_fraction: float = 0.001
    iou_threshold: float = 0.5
    max_num_iter: int = 10
    min_frames: Optional[int] = None  # the model window; shorter supervoxels are marked dropped

    @classmethod
    def from_config(cls, seg: dict[str, Any], min_frames: Optional[int]) -> "SegmentParams":
        return cls(n_segments=tuple(int(n) for n in seg["n_segments"]), compactness=float(seg["compactness"]),
                   sigma=float(seg["sigma"]), spacing=tuple(float(s) for s in seg["spacing"]),  # type: ignore[arg-type]
                   min_volume_fraction=float(seg["min_volume_fraction"]),
                   iou_threshold=float(seg["iou_threshold"]), max_num_iter=int(seg["max_num_iter"]),
                   min_frames=min_frames if seg["short_supervoxels"] == "drop" else None)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["n_segments"], d["spacing"] = list(self.n_segments), list(self.spacing)
        return d


@dataclass
class SegmentedVideo:
    video_id: str
    error: Optional[str] = None
    labels: Optional[np.ndarray] = None  # uint16 [R, L, H, W]
    table: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0


def segment_video(row: dict[str, Any], spec: ClipSpec, params: SegmentParams) -> SegmentedVideo:
    """Decode the clip of one `ok` video and segment it; a failure is returned, not raised."""
    import time

    t0 = time.perf_counter()
    try:
        clip = read_clip(row["path"], spec)
        expected = row.get("clip_frame_indices")
        if expected is not None and list(clip.frame_indices) != list(expected):
            raise RuntimeError("the video changed since ingestion: its clip frame indices differ")
        seg = segment_clip(clip.frames, n_segments=params.n_segments, compactness=params.compactness,
                           sigma=params.sigma, spacing=params.spacing,
                           min_volume_fraction=params.min_volume_fraction, iou_threshold=params.iou_threshold,
                           min_frames=params.min_frames, max_num_iter=params.max_num_iter)
    except Exception as e:
        return SegmentedVideo(row["video_id"], error=f"segmentation failed: {type(e).__name__}: {e}",
                              seconds=time.perf_counter() - t0)
    return SegmentedVideo(row["video_id"], labels=seg.labels, table=seg.table, seconds=time.perf_counter() - t0)
