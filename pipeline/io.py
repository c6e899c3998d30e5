"""Reading and writing run outputs.

Writers replace files atomically (write `x.part`, then rename), so a crash never leaves a
half-written file that a rerun would trust. Readers are the public API for people who
analyse a run.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def write_table(table: pa.Table, path: str) -> None:
    """Write a Parquet file atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".part"
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def write_json(obj: Any, path: str) -> None:
    """Write JSON atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".part"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    os.replace(tmp, path)


# --- datasets written in parts (supervoxels/, label_volumes/, ...) ---------------------

def part_files(folder: str) -> list[str]:
    """The complete part files of a dataset folder, in order (`*.part` leftovers excluded)."""
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.startswith("part-") and f.endswith(".parquet"))


def part_path(folder: str, index: int) -> str:
    return os.path.join(folder, f"part-{index:05d}.parquet")


def next_part_index(folder: str) -> int:
    """The index the next part of a dataset folder gets (one past the highest there)."""
    return max((int(os.path.basename(p)[len("part-"):-len(".parquet")]) for p in part_files(folder)),
               default=-1) + 1


def write_part(table: pa.Table, folder: str, index: int, metadata: dict[str, str] | None = None) -> str:
    """Write one part of a dataset atomically, with key/value metadata (e.g. the settings)."""
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               **{k.encode(): v.encode() for k, v in metadata.items()}})
    path = part_path(folder, index)
    write_table(table, path)
    return path


def part_metadata(path: str) -> dict[str, str]:
    meta = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if not k.startswith(b"ARROW")}


def read_parts(folder: str, columns: list[str] | None = None, filter: Any = None) -> pa.Table:
    """All complete parts of a dataset folder as one table (optionally filtered)."""
    import pyarrow.dataset as ds

    files = part_files(folder)
    if not files:
        raise FileNotFoundError(f"no dataset at {folder} (no part-*.parquet files)")
    return ds.dataset(files, format="parquet").to_table(columns=columns, filter=filter)


def stack_label_volumes(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Rows of `label_volumes/` -> uint16 [R, L, H, W] per video, resolutions in order."""
    by_video: dict[str, list[tuple[int, np.ndarray]]] = {}
    for r in rows:
        vol = np.frombuffer(r["labels"], dtype=np.uint16).reshape(r["shape"])
        by_video.setdefault(r["video_id"], []).append((r["resolution"], vol))
    return {vid: np.stack([v for _, v in sorted(vols, key=lambda x: x[0])]) for vid, vols in by_video.items()}


def load_label_volumes(run_dir: str, video_ids: list[str]) -> dict[str, np.ndarray]:
    """The label volumes uint16 [R, L, H, W] of several videos, in one filtered read."""
    import pyarrow.dataset as ds

    rows = read_parts(os.path.join(run_dir, "label_volumes"), filter=ds.field("video_id").isin(list(video_ids)))
    return stack_label_volumes(rows.to_pylist())


# --- public readers ----------------------------------------------------------------------

def load_label_volume(run_dir: str, video_id: str, resolution: int) -> np.ndarray:
    """The SLIC label volume uint16 [L, H, W] of one video at one resolution."""
    import pyarrow.dataset as ds

    t = read_parts(os.path.join(run_dir, "label_volumes"), columns=["shape", "labels"],
                   filter=(ds.field("video_id") == video_id) & (ds.field("resolution") == resolution))
    if t.num_rows == 0:
        raise KeyError(f"no label volume for video {video_id!r} at resolution {resolution} in {run_dir}")
    shape = tuple(t.column("shape")[0].as_py())
    return np.frombuffer(t.column("labels")[0].as_py(), dtype=np.uint16).reshape(shape)


def load_supervoxel_mask(run_dir: str, video_id: str, supervoxel_id: int) -> np.ndarray:
    """The voxels of one supervoxel: bool [T, H, W] in clip coordinates (the clip's frames are
    source frames `clip_frame_indices` of videos.parquet, resized to clip_height x clip_width)."""
    import pyarrow.dataset as ds

    t = read_parts(os.path.join(run_dir, "supervoxels"), columns=["resolution", "label"],
                   filter=(ds.field("video_id") == video_id) & (ds.field("supervoxel_id") == int(supervoxel_id)))
    if t.num_rows == 0:
        raise KeyError(f"no supervoxel {supervoxel_id} of video {video_id!r} in {run_dir}")
    resolution, label = t.column("resolution")[0].as_py(), t.column("label")[0].as_py()
    return load_label_volume(run_dir, video_id, resolution) == label


def load_voxel_importance(run_dir: str, video_id: str, layer: str | None = None,
                          target_class: str | None = None) -> np.ndarray:
    """Voxel importance of a scored video: float32 [T, H, W] in clip coordinates.

    layer: an explained layer (None: the first the run explained); target_class: the class
    whose concepts score it (None: the video's own class, the one it was scored for).
    """
    import pyarrow.dataset as ds

    from pipeline.scoring.voxel_importance import importance_map

    flt = ds.field("video_id") == video_id
    if target_class is not None:
        flt = flt & (ds.field("target_class") == target_class)
    t = read_parts(os.path.join(run_dir, "voxel_importance"), filter=flt).to_pylist()
    if not t:
        raise KeyError(f"no voxel importance for video {video_id!r} in {run_dir} (only scoring videos have one)")
    layers = list(dict.fromkeys(r["layer"] for r in t))
    chosen = layer if layer is not None else layers[0]
    rows = [r for r in t if r["layer"] == chosen]
    if not rows:
        raise KeyError(f"no voxel importance for video {video_id!r} at layer {chosen!r}; layers: {layers}")
    row = rows[0]
    labels = load_label_volumes(run_dir, [video_id])[video_id]
    return importance_map(labels, row["supervoxel_ids"], row["scores"])
