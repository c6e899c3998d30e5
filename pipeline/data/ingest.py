"""Ingestion of one video: read its container's metadata (no decoding) and record what
`videos.parquet` holds, with the source frames its clip takes; and
the clip of a `videos.parquet` row read again by a later stage, checked against that record.

Pure functions of (row, clip spec); the Ray layer fans them out.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Optional

from pipeline import schemas
from pipeline.data.video import (Clip, ClipSpec, DecodeLimits, VideoChanged, VideoError, probe_clip, read_clip,
                                 retryable)


def video_row(row: dict[str, Any], spec: ClipSpec, error: Optional[str] = None) -> dict[str, Any]:
    """The `videos.parquet` row of a manifest row before its clip is read: `failed` with
    `error` (or the manifest's own reason) until ingestion says otherwise."""
    return {
        "video_id": row["video_id"], "path": row["path"], "label": row["label"], "split": row.get("split"),
        "status": schemas.FAILED, "error": error or row.get("error"), "num_frames": None, "fps": None,
        "height": None, "width": None, "clip_frame_indices": None,
        "clip_height": spec.height, "clip_width": spec.width, "retryable": False,
        "size": row.get("size"), "mtime_ns": row.get("mtime_ns"), "identity": stat_identity(row),
    }


def stat_identity(row: dict[str, Any]) -> Optional[str]:
    """A manifest row's file identity from its listing: size and modification time."""
    return None if row.get("size") is None else f"stat:{row['size']}:{row['mtime_ns']}"


def content_identity(path: str) -> str:
    """A file's identity from its bytes (`dataset.identity=sha256`)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return f"sha256:{h.hexdigest()}"


def ingest_video(row: dict[str, Any], spec: ClipSpec, limits: Optional[DecodeLimits] = None,
                 identity: str = "stat") -> dict[str, Any]:
    """The `videos.parquet` row of one manifest row: `ok` with the stream's metadata and the
    clip's source frame indices, or `failed` with the reason. Never raises for a bad video. Only
    the container is read: a stream that cannot be decoded fails in the segment stage.
    `identity`: "stat" (the listing's size and time) or "sha256" (the file's bytes are read)."""
    out = video_row(row, spec)
    if out["error"]:
        return out
    try:
        if identity == "sha256":
            out["identity"] = content_identity(row["path"])
        info, indices = probe_clip(row["path"], spec, limits)
    except VideoError as e:
        out.update(error=str(e), retryable=retryable(e))
        return out
    except Exception as e:  # a decoder bug must not take the run down: record it
        out.update(error=f"{type(e).__name__}: {e}", retryable=retryable(e))
        return out
    out.update(status=schemas.OK, error=None, retryable=None, num_frames=info.num_frames, fps=info.fps,
               height=info.height, width=info.width, clip_frame_indices=indices.tolist())
    return out


def read_ingested_clip(row: dict[str, Any], spec: ClipSpec, limits: Optional[DecodeLimits] = None) -> Clip:
    """The clip of a `videos.parquet` row, checked against the file and the source frames
    ingestion recorded (a video replaced since then fails, rather than explaining other frames)."""
    if row.get("size") is not None:
        st = os.stat(row["path"])
        if (st.st_size, st.st_mtime_ns) != (row["size"], row["mtime_ns"]):
            raise VideoChanged("the file changed since ingestion: its size or modification time differ (rerun to "
                               "redo it)")
    clip = read_clip(row["path"], spec, limits)
    expected = row.get("clip_frame_indices")
    if expected is not None and list(clip.frame_indices) != list(expected):
        raise VideoChanged("the video changed since ingestion: its clip frame indices differ")
    return clip
