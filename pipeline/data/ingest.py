"""Ingestion of one video: read its container's metadata (no decoding) and record what
`videos.parquet` holds, with the source frames its clip takes; and
the clip of a `videos.parquet` row read again by a later stage, checked against that record.

Pure functions of (row, clip spec); the Ray layer fans them out.
"""

from __future__ import annotations

from typing import Any, Optional

from pipeline import schemas
from pipeline.data.video import Clip, ClipSpec, DecodeLimits, VideoError, probe_clip, read_clip


def video_row(row: dict[str, Any], spec: ClipSpec, error: Optional[str] = None) -> dict[str, Any]:
    """The `videos.parquet` row of a manifest row before its clip is read: `failed` with
    `error` (or the manifest's own reason) until ingestion says otherwise."""
    return {
        "video_id": row["video_id"], "path": row["path"], "label": row["label"], "split": row.get("split"),
        "status": schemas.FAILED, "error": error or row.get("error"), "num_frames": None, "fps": None,
        "height": None, "width": None, "clip_frame_indices": None,
        "clip_height": spec.height, "clip_width": spec.width,
    }


def ingest_video(row: dict[str, Any], spec: ClipSpec, limits: Optional[DecodeLimits] = None) -> dict[str, Any]:
    """The `videos.parquet` row of one manifest row: `ok` with the stream's metadata and the
    clip's source frame indices, or `failed` with the reason. Never raises for a bad video. Only
    the container is read: a stream that cannot be decoded fails in the segment stage."""
    out = video_row(row, spec)
    if out["error"]:
        return out
    try:
        info, indices = probe_clip(row["path"], spec, limits)
    except VideoError as e:
        out["error"] = str(e)
        return out
    except Exception as e:  # a decoder bug must not take the run down: record it
        out["error"] = f"{type(e).__name__}: {e}"
        return out
    out.update(status=schemas.OK, error=None, num_frames=info.num_frames, fps=info.fps, height=info.height,
               width=info.width, clip_frame_indices=indices.tolist())
    return out


def read_ingested_clip(row: dict[str, Any], spec: ClipSpec, limits: Optional[DecodeLimits] = None) -> Clip:
    """The clip of a `videos.parquet` row, checked against the source frames ingestion
    recorded (a video replaced since then fails, rather than explaining other frames)."""
    clip = read_clip(row["path"], spec, limits)
    expected = row.get("clip_frame_indices")
    if expected is not None and list(clip.frame_indices) != list(expected):
        raise RuntimeError("the video changed since ingestion: its clip frame indices differ")
    return clip
