"""Ingestion of one video: decode its clip once and record what `videos.parquet` holds.

A pure function of (manifest row, clip spec); the Ray layer fans it out.
"""

from __future__ import annotations

from typing import Any

from pipeline import schemas
from pipeline.data.video import ClipSpec, VideoError, read_clip


def ingest_video(row: dict[str, Any], spec: ClipSpec) -> dict[str, Any]:
    """The `videos.parquet` row of one manifest row: `ok` with the stream's metadata and the
    clip's source frame indices, or `failed` with the reason. Never raises for a bad video."""
    out: dict[str, Any] = {
        "video_id": row["video_id"], "path": row["path"], "label": row["label"], "split": row.get("split"),
        "status": schemas.FAILED, "error": row.get("error"), "num_frames": None, "fps": None,
        "height": None, "width": None, "clip_frame_indices": None,
        "clip_height": spec.height, "clip_width": spec.width,
    }
    if out["error"]:
        return out
    try:
        clip = read_clip(row["path"], spec)
    except VideoError as e:
        out["error"] = str(e)
        return out
    except Exception as e:  # a decoder bug must not take the run down: record it
        out["error"] = f"{type(e).__name__}: {e}"
        return out
    info = clip.info
    out.update(status=schemas.OK, error=None, num_frames=info.num_frames, fps=info.fps, height=info.height,
               width=info.width, clip_frame_indices=clip.frame_indices.tolist())
    return out
