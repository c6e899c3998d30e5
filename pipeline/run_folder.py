"""The run folder: the one module that knows its names, its resume rules and its writers.

A run folder (`run.output_dir`, a local path or a pyarrow filesystem URI) holds one dataset per
stage output (see the README's Outputs table). This module owns:

- every output's name (the constants below);
- the per-stage fingerprints: the settings that change a stage's outputs, and only those
  (scheduling settings such as the number of actors or the videos per part may change between
  runs of one folder);
- the done markers: a batch of videos is done when its marker part (written last) exists with
  the stage's fingerprint; data parts without their marker are crash leftovers and are removed;
- the part writer: part names carry the writing run's id, so two writers never collide;
- failure records: a video that fails a stage stays a row of videos.parquet, with the reason;
- the lease (`pipeline.lease`): one live driver per folder;
- the readers of a finished run (label volumes, supervoxel masks, voxel importance).
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from pipeline import io, schemas

VIDEOS = "videos.parquet"
SUPERVOXELS = "supervoxels"
LABEL_VOLUMES = "label_volumes"
ACTIVATIONS = "activations"
PREDICTIONS = "predictions"
CONCEPTS = "concepts.parquet"
CONCEPT_MEMBERS = "concept_members.parquet"
TCAV = "tcav.parquet"
VOXEL_IMPORTANCE = "voxel_importance"
EVALUATION = "evaluation.parquet"
REPORT = "report"
REPORT_INDEX = "report/index.html"
RUN_JSON = "run.json"
LEASE = "lease.json"  # the driver holding the folder (pipeline.lease)

SEGMENT_FIELDS = ("n_segments", "compactness", "sigma", "spacing", "min_volume_fraction", "iou_threshold",
                  "max_num_iter")
ACTIVATE_FIELDS = ("batch_size", "measure_batch", "fill", "resampling", "autocast", "gradients", "channels_last")


class RunFolderError(RuntimeError):
    """The run folder cannot be used as asked (made with other settings, missing a stage's
    inputs, or in use by another driver); the message says what to do."""


def fingerprints(c: dict[str, Any], window: int, model_digest: Optional[str] = None) -> dict[str, str]:
    """Per resumable stage, the settings its outputs depend on, as canonical JSON. `window`:
    the model's input frames (segment drops shorter supervoxels with short_supervoxels=drop);
    `model_digest`: the weights' digest of a model handed over as an nn.Module (it has no name
    that says what it computes)."""
    seg = c["segment"]
    segment = {k: seg[k] for k in SEGMENT_FIELDS}
    activate = {k: c["activate"][k] for k in ACTIVATE_FIELDS}
    model = dict(c["model"], **({"digest": model_digest} if model_digest else {}))
    return {
        "ingest": _canonical({"clip": c["clip"]}),
        "segment": _canonical({"clip": c["clip"], "segment": segment,
                               "min_frames": window if seg["short_supervoxels"] == "drop" else None}),
        "activate": _canonical({"clip": c["clip"], "activate": activate, "model": model,
                                "segment": {**segment, "short_supervoxels": seg["short_supervoxels"]}}),
    }


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


class RunFolder:
    """One run folder. `run_id` names the writing run (its part files carry it)."""

    def __init__(self, root: str, run_id: Optional[str] = None) -> None:
        self.root = str(root)
        self.run_id = run_id
        self._parts_written = 0
        self.lease: Any = None  # pipeline.lease.Lease while a driver holds the folder

    def path(self, *names: str) -> str:
        return io.join(self.root, *names)

    def exists(self, *names: str) -> bool:
        return io.exists(self.path(*names))

    def require(self, name: str, stage: str, producer: str) -> None:
        """Stop with a clear error when a stage's input is missing."""
        if not self.exists(name):
            raise RunFolderError(f"the {stage} stage needs {name} in {self.root}: run the {producer} stage first "
                                 f"(run.stages=[...,{producer},{stage}])")

    # --- videos.parquet --------------------------------------------------------------------

    def read_videos(self) -> list[dict[str, Any]]:
        return io.read_table(self.path(VIDEOS)).to_pylist()

    def videos_fingerprint(self) -> str:
        return (io.read_schema(self.path(VIDEOS)).metadata or {}).get(b"settings", b"").decode()

    def write_videos(self, rows: list[dict[str, Any]], fingerprint: str) -> pa.Table:
        self._check_lease()
        table = pa.Table.from_pylist(rows, schema=schemas.VIDEOS.with_metadata({"settings": fingerprint}))
        io.write_table(table, self.path(VIDEOS))
        return table

    def record_failures(self, failures: dict[str, str], stage: str) -> list[dict[str, Any]]:
        """Mark videos that failed in `stage` in videos.parquet (they stay rows, with the reason);
        returns every row."""
        rows = self.read_videos()
        if failures:
            for r in rows:
                if r["video_id"] in failures:
                    r.update(status=schemas.FAILED, error=failures[r["video_id"]], failed_stage=stage)
            self.write_videos(rows, self.videos_fingerprint())
        return rows

    # --- datasets written in parts -----------------------------------------------------------

    def done_videos(self, marker: str, data: Sequence[str], fingerprint: str, what: str) -> set[str]:
        """Videos whose results are complete: listed in a part of `marker` (written last) made
        with this fingerprint. Parts of the `data` datasets without their marker part are crash
        leftovers and are removed, so their videos are done again."""
        done: set[str] = set()
        markers = io.part_files(self.path(marker))
        for path in markers:
            if io.part_metadata(path).get("settings") != fingerprint:
                raise RunFolderError(f"{path} was made with other {what} settings; use a new run.output_dir "
                                     f"(or delete {self.path(marker)} and {', '.join(self.path(d) for d in data)})")
            done.update(io.read_table(path, columns=["video_id"]).column("video_id").unique().to_pylist())
        complete = {os.path.basename(p) for p in markers}
        for name in data:
            for path in io.part_files(self.path(name)):
                if os.path.basename(path) not in complete:
                    io.remove(path)
        return done

    def write_parts(self, tables: Sequence[tuple[str, pa.Table]], fingerprint: str) -> None:
        """One batch: a part of each dataset, all under one new name (the run's id and a
        counter: two writers never collide), written in order, so the last is the batch's
        marker."""
        assert self.run_id, "a RunFolder writes parts only with a run_id"
        self._check_lease()
        name = f"part-{self.run_id}-{self._parts_written:05d}.parquet"
        self._parts_written += 1
        for dataset, table in tables:
            meta = {**(table.schema.metadata or {}), b"settings": fingerprint.encode()}
            io.write_table(table.replace_schema_metadata(meta), self.path(dataset, name))

    def write_table(self, name: str, table: pa.Table) -> None:
        """A whole-run table (concepts.parquet, ...), replaced atomically."""
        self._check_lease()
        io.write_table(table, self.path(name))

    def write_bytes(self, name: str, data: bytes) -> None:
        self._check_lease()
        io.write_bytes(data, self.path(name))

    def write_json(self, name: str, obj: Any) -> None:
        self._check_lease()
        io.write_json(obj, self.path(name))

    def read(self, dataset: str, columns: Optional[list[str]] = None, filter: Any = None) -> pa.Table:
        """A dataset (a table or a folder of parts) as one table."""
        if dataset.endswith(".parquet"):
            table = io.read_table(self.path(dataset), columns=columns)
            return table if filter is None else table.filter(filter)
        return io.read_parts(self.path(dataset), columns=columns, filter=filter)

    def _check_lease(self) -> None:
        if self.lease is not None:
            self.lease.check()

    # --- label volumes -----------------------------------------------------------------------

    def label_volumes(self, video_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The label volumes uint16 [R, L, H, W] of several videos, in one filtered read."""
        if not video_ids:
            return {}
        rows = self.read(LABEL_VOLUMES, filter=ds.field("video_id").isin(list(video_ids)))
        return stack_label_volumes(rows.to_pylist())

    def iter_label_volumes(self, video_ids: set[str]) -> Iterator[tuple[str, np.ndarray]]:
        """(video_id, label volumes) of the wanted videos, one label-volume part at a time (the
        driver holds one part's worth)."""
        wanted = ds.field("video_id").isin(sorted(video_ids))
        for path in io.part_files(self.path(LABEL_VOLUMES)):
            yield from stack_label_volumes(io.read_table(path).filter(wanted).to_pylist()).items()

    def label_volume(self, video_id: str, resolution: int) -> np.ndarray:
        """The SLIC label volume uint16 [L, H, W] of one video at one resolution."""
        t = self.read(LABEL_VOLUMES, columns=["shape", "labels"],
                      filter=(ds.field("video_id") == video_id) & (ds.field("resolution") == resolution))
        if t.num_rows == 0:
            raise KeyError(f"no label volume for video {video_id!r} at resolution {resolution} in {self.root}")
        shape = tuple(t.column("shape")[0].as_py())
        return np.frombuffer(t.column("labels")[0].as_py(), dtype=np.uint16).reshape(shape)

    def supervoxel_mask(self, video_id: str, supervoxel_id: int) -> np.ndarray:
        """The voxels of one supervoxel: bool [T, H, W] in clip coordinates (the clip's frames
        are source frames `clip_frame_indices` of videos.parquet, resized to clip_height x
        clip_width)."""
        t = self.read(SUPERVOXELS, columns=["resolution", "label"],
                      filter=(ds.field("video_id") == video_id) & (ds.field("supervoxel_id") == int(supervoxel_id)))
        if t.num_rows == 0:
            raise KeyError(f"no supervoxel {supervoxel_id} of video {video_id!r} in {self.root}")
        resolution, label = t.column("resolution")[0].as_py(), t.column("label")[0].as_py()
        return self.label_volume(video_id, resolution) == label

    def voxel_importance(self, video_id: str, layer: Optional[str] = None, target_class: Optional[str] = None,
                         score: str = "tcav") -> np.ndarray:
        """Voxel importance of a scored video: float32 [T, H, W] in clip coordinates.

        layer: an explained layer (None: the first the run explained); target_class: the class
        whose concepts score it (None: the one it was scored for, its own); score: `tcav` (the
        paper's: each supervoxel takes its concept's mean TCAV score) or `causal` (its concept's
        causal importance, from the evaluate stage).
        """
        from pipeline.scoring.voxel_importance import causal_scores, importance_map

        if score not in ("tcav", "causal"):
            raise ValueError(f"score must be 'tcav' or 'causal', got {score!r}")
        flt = ds.field("video_id") == video_id
        if target_class is not None:
            flt = flt & (ds.field("target_class") == target_class)
        rows = self.read(VOXEL_IMPORTANCE, filter=flt).to_pylist()
        if not rows:
            raise KeyError(f"no voxel importance for video {video_id!r} in {self.root} (only scoring videos have one)")
        layers = list(dict.fromkeys(r["layer"] for r in rows))
        chosen = layer if layer is not None else layers[0]
        rows = [r for r in rows if r["layer"] == chosen]
        if not rows:
            raise KeyError(f"no voxel importance for video {video_id!r} at layer {chosen!r}; layers: {layers}")
        row = rows[0]
        scores = row["scores"]
        if score == "causal":
            causal = {r["concept"]: r["causal_importance"]
                      for r in self.read(CONCEPTS, columns=["concept", "causal_importance"]).to_pylist()}
            if not any(v is not None for v in causal.values()):
                raise KeyError(f"{self.root} has no causal importance yet: run the evaluate stage")
            scores = causal_scores(row["concepts"], causal)
        return importance_map(self.label_volumes([video_id])[video_id], row["supervoxel_ids"], scores)


def stack_label_volumes(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Rows of `label_volumes/` -> uint16 [R, L, H, W] per video, resolutions in order."""
    by_video: dict[str, list[tuple[int, np.ndarray]]] = {}
    for r in rows:
        vol = np.frombuffer(r["labels"], dtype=np.uint16).reshape(r["shape"])
        by_video.setdefault(r["video_id"], []).append((r["resolution"], vol))
    return {vid: np.stack([v for _, v in sorted(vols, key=lambda x: x[0])]) for vid, vols in by_video.items()}
