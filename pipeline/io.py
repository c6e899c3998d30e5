"""Reading and writing run outputs, on a local path or any pyarrow filesystem URI
(`s3://bucket/prefix`, `gs://...`, `hdfs://...`, `file:///abs/path`).

Writers replace files atomically (write `x.part`, then rename), so a crash never leaves a
half-written file that a rerun would trust (on object stores a rename is a copy: the part
file written last still marks a batch complete, see run.py). Readers are the public API for
people who analyse a run.
"""

from __future__ import annotations

import json
import os
import posixpath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

_FILESYSTEMS: dict[str, pafs.FileSystem] = {}


def is_uri(path: str) -> bool:
    return "://" in str(path)


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI. One filesystem object per
    scheme and authority, kept for the process (clients are reused; an in-memory `mock://`
    filesystem keeps its files)."""
    path = str(path)
    if not is_uri(path):
        return pafs.LocalFileSystem(), os.path.abspath(path)
    scheme, rest = path.split("://", 1)
    authority, _, key = rest.partition("/")
    if f"{scheme}://{authority}" not in _FILESYSTEMS:
        _FILESYSTEMS[f"{scheme}://{authority}"] = pafs.FileSystem.from_uri(path)[0]
    fs = _FILESYSTEMS[f"{scheme}://{authority}"]
    if scheme in ("file", "hdfs", "viewfs"):  # paths from the root, the authority names the host
        return fs, "/" + key
    return fs, posixpath.join(authority, key) if authority else key  # object stores: bucket/key


def join(base: str, *names: str) -> str:
    """A path below `base`, for local paths and URIs alike."""
    return posixpath.join(str(base), *names) if is_uri(base) else os.path.join(base, *names)


def exists(path: str) -> bool:
    fs, p = resolve(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def makedirs(path: str) -> None:
    fs, p = resolve(path)
    fs.create_dir(p, recursive=True)


def remove(path: str) -> None:
    fs, p = resolve(path)
    fs.delete_file(p)


def read_table(path: str, columns: list[str] | None = None) -> pa.Table:
    fs, p = resolve(path)
    return pq.read_table(p, columns=columns, filesystem=fs)


def read_schema(path: str) -> pa.Schema:
    fs, p = resolve(path)
    return pq.read_schema(p, filesystem=fs)


def read_json(path: str) -> Any:
    fs, p = resolve(path)
    with fs.open_input_stream(p) as f:
        return json.loads(f.read().decode())


def _write_atomically(path: str, write: Any) -> None:
    """`write(fs, tmp)` writes `path + ".part"`, which then replaces `path`."""
    fs, p = resolve(path)
    fs.create_dir(posixpath.dirname(p), recursive=True)
    write(fs, p + ".part")
    fs.move(p + ".part", p)


def write_table(table: pa.Table, path: str) -> None:
    """Write a Parquet file atomically."""
    _write_atomically(path, lambda fs, tmp: pq.write_table(table, tmp, filesystem=fs))


def write_bytes(data: bytes, path: str) -> None:
    """Write a file's bytes atomically."""
    def write(fs: pafs.FileSystem, tmp: str) -> None:
        with fs.open_output_stream(tmp) as f:
            f.write(data)

    _write_atomically(path, write)


def write_json(obj: Any, path: str) -> None:
    """Write JSON atomically."""
    write_bytes((json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode(), path)


# --- datasets written in parts (supervoxels/, label_volumes/, ...) ---------------------

def part_files(folder: str) -> list[str]:
    """The complete part files of a dataset folder, in order (`*.part` leftovers excluded)."""
    fs, p = resolve(folder)
    infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
    names = [posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.File]
    return sorted(join(folder, n) for n in names if n.startswith("part-") and n.endswith(".parquet"))


def part_path(folder: str, index: int) -> str:
    return join(folder, f"part-{index:05d}.parquet")


def next_part_index(folder: str) -> int:
    """The index the next part of a dataset folder gets (one past the highest there)."""
    return max((int(posixpath.basename(p)[len("part-"):-len(".parquet")]) for p in part_files(folder)),
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
    meta = read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if not k.startswith(b"ARROW")}


def read_parts(folder: str, columns: list[str] | None = None, filter: Any = None) -> pa.Table:
    """All complete parts of a dataset folder as one table (optionally filtered)."""
    import pyarrow.dataset as ds

    files = part_files(folder)
    if not files:
        raise FileNotFoundError(f"no dataset at {folder} (no part-*.parquet files)")
    fs, _ = resolve(folder)
    return ds.dataset([resolve(f)[1] for f in files], format="parquet", filesystem=fs).to_table(columns=columns,
                                                                                               filter=filter)


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

    rows = read_parts(join(run_dir, "label_volumes"), filter=ds.field("video_id").isin(list(video_ids)))
    return stack_label_volumes(rows.to_pylist())


# --- public readers ----------------------------------------------------------------------

def load_label_volume(run_dir: str, video_id: str, resolution: int) -> np.ndarray:
    """The SLIC label volume uint16 [L, H, W] of one video at one resolution."""
    import pyarrow.dataset as ds

    t = read_parts(join(run_dir, "label_volumes"), columns=["shape", "labels"],
                   filter=(ds.field("video_id") == video_id) & (ds.field("resolution") == resolution))
    if t.num_rows == 0:
        raise KeyError(f"no label volume for video {video_id!r} at resolution {resolution} in {run_dir}")
    shape = tuple(t.column("shape")[0].as_py())
    return np.frombuffer(t.column("labels")[0].as_py(), dtype=np.uint16).reshape(shape)


def load_supervoxel_mask(run_dir: str, video_id: str, supervoxel_id: int) -> np.ndarray:
    """The voxels of one supervoxel: bool [T, H, W] in clip coordinates (the clip's frames are
    source frames `clip_frame_indices` of videos.parquet, resized to clip_height x clip_width)."""
    import pyarrow.dataset as ds

    t = read_parts(join(run_dir, "supervoxels"), columns=["resolution", "label"],
                   filter=(ds.field("video_id") == video_id) & (ds.field("supervoxel_id") == int(supervoxel_id)))
    if t.num_rows == 0:
        raise KeyError(f"no supervoxel {supervoxel_id} of video {video_id!r} in {run_dir}")
    resolution, label = t.column("resolution")[0].as_py(), t.column("label")[0].as_py()
    return load_label_volume(run_dir, video_id, resolution) == label


def load_voxel_importance(run_dir: str, video_id: str, layer: str | None = None,
                          target_class: str | None = None, score: str = "tcav") -> np.ndarray:
    """Voxel importance of a scored video: float32 [T, H, W] in clip coordinates.

    layer: an explained layer (None: the first the run explained); target_class: the class
    whose concepts score it (None: the video's own class, the one it was scored for); score:
    `tcav` (the paper's: each supervoxel takes its concept's mean TCAV score) or `causal` (its
    concept's causal importance, from the evaluate stage).
    """
    if score not in ("tcav", "causal"):
        raise ValueError(f"score must be 'tcav' or 'causal', got {score!r}")
    import pyarrow.dataset as ds

    from pipeline.scoring.voxel_importance import causal_scores, importance_map

    flt = ds.field("video_id") == video_id
    if target_class is not None:
        flt = flt & (ds.field("target_class") == target_class)
    t = read_parts(join(run_dir, "voxel_importance"), filter=flt).to_pylist()
    if not t:
        raise KeyError(f"no voxel importance for video {video_id!r} in {run_dir} (only scoring videos have one)")
    layers = list(dict.fromkeys(r["layer"] for r in t))
    chosen = layer if layer is not None else layers[0]
    rows = [r for r in t if r["layer"] == chosen]
    if not rows:
        raise KeyError(f"no voxel importance for video {video_id!r} at layer {chosen!r}; layers: {layers}")
    row = rows[0]
    labels = load_label_volumes(run_dir, [video_id])[video_id]
    scores = row["scores"]
    if score == "causal":
        concepts = read_table(join(run_dir, "concepts.parquet"), columns=["concept", "causal_importance"]).to_pylist()
        causal = {r["concept"]: r["causal_importance"] for r in concepts}
        if not any(v is not None for v in causal.values()):
            raise KeyError(f"{run_dir} has no causal importance yet: run the evaluate stage")
        scores = causal_scores(row["concepts"], causal)
    return importance_map(labels, row["supervoxel_ids"], scores)
