"""The Parquet schemas of every output dataset, in one place (see README, "Outputs")."""

from __future__ import annotations

import pyarrow as pa

# Status of a video in videos.parquet.
OK = "ok"
FAILED = "failed"

VIDEOS = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("split", pa.string()),
        pa.field("status", pa.string(), nullable=False),  # ok | failed
        pa.field("error", pa.string()),  # why it failed (null when ok)
        pa.field("num_frames", pa.int64()),  # frames in the source video stream
        pa.field("fps", pa.float64()),
        pa.field("height", pa.int32()),  # source frame size
        pa.field("width", pa.int32()),
        # Source frame index of every clip frame: clip frame i is source frame clip_frame_indices[i].
        pa.field("clip_frame_indices", pa.list_(pa.int64())),
        pa.field("clip_height", pa.int32()),  # the clip's frames are resized to this size
        pa.field("clip_width", pa.int32()),
    ]
)
