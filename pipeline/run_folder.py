"""The run folder: the one module that knows its names, its resume rules and its writers.

A run folder (`run.output_dir`, a local path or a pyarrow filesystem URI) holds one dataset per
stage output (see the README's Outputs table). This module owns:

- every output's name (the constants below);
- the per-stage fingerprints: the settings that change a stage's outputs, and only those
  (scheduling settings such as the number of actors or the videos per part may change between
  runs of one folder);
- units of work: whoever does a unit (a task, an actor) writes its parts, then its marker rows
  in `_done/<stage>/` with the stage's fingerprint (`write_unit`); a unit is done when its
  marker exists, and parts without one are crash leftovers, removed (`done_units`); part names
  carry the writing run's id and the unit's, so two writers never collide;
- failure records: a video that fails a stage stays a row of videos.parquet, with the reason;
- the lease (`pipeline.lease`): one live driver per folder;
- the readers of a finished run (label volumes, supervoxel masks, voxel importance).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Optional, Sequence
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import io, schemas

VIDEOS = "videos.parquet"
SUPERVOXELS = "supervoxels"
LABEL_VOLUMES = "label_volumes"
ACTIVATIONS = "activations"
PREDICTIONS = "predictions"
CONCEPTS = "concepts.parquet"
CONCEPT_MEMBERS = "concept_members"
TCAV = "tcav_scores"
VOXEL_IMPORTANCE = "voxel_importance"
EVALUATION = "evaluation"
REPORT, REPORT_INDEX, REPORT_ATLAS = "report", "report/index.html", "report/atlas.html"
CONCEPT_PRESENCE = "concept_presence"  # a scored run's (pipeline.score): <class>/<layer>/ parts
RUN_JSON = "run.json"
LEASE = "lease.json"  # the driver holding the folder (pipeline.lease)
CLIP_ACTIVATIONS = "clip_activations"
RANDOMISED_GRADIENTS = "randomised_gradients"
DONE = "_done"  # _done/<stage>/part-<run>-<unit>.parquet: the markers of finished units
UNLABELLED = "_unlabelled"  # the class partition of a video without a label
# the atlas stage's: <layer>/ (the trained index), <layer>/<class>/ (assignments, counts, links),
# <layer>/<class>.faiss (a shard, until merged), <layer>.faiss (the index), the tables, the manifest
ATLAS_TRAINED, ATLAS_ASSIGNMENTS, ATLAS_COUNTS = "atlas/_train", "atlas/assignments", "atlas/_counts"
ATLAS_SHARDS, ATLAS_INDEX, ATLAS_LINKS = "atlas/_shards", "atlas/index", "atlas/concept_links"
ATLAS_CONCEPTS, ATLAS_CLASS_CONCEPTS = "atlas/concepts.parquet", "atlas/class_concepts.parquet"
ATLAS_MANIFEST = "atlas/atlas.json"

SEGMENT_FIELDS = ("n_segments", "compactness", "sigma", "spacing", "min_volume_fraction", "iou_threshold",
                  "max_num_iter", "dedupe")
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
    segment = {k: seg[k] for k in SEGMENT_FIELDS if k != "dedupe" or seg[k] != "voxel"}  # voxel: fingerprints as before
    activate = {k: c["activate"][k] for k in ACTIVATE_FIELDS}
    model = {k: v for k, v in c["model"].items() if k != "layout" or v}  # layout "": fingerprints as before
    model.update({"digest": model_digest} if model_digest else {})
    return {
        "ingest": _canonical({"clip": c["clip"]}),
        "segment": _canonical({"clip": c["clip"], "segment": segment,
                               "min_frames": window if seg["short_supervoxels"] == "drop" else None}),
        "activate": _canonical({"clip": c["clip"], "activate": activate, "model": model,
                                "segment": {**segment, "short_supervoxels": seg["short_supervoxels"]}}),
    }


def reduction_fingerprint(upstream: str, settings: Any, videos: Sequence[tuple[str, Optional[str]]]) -> str:
    """The fingerprint of a reduction (concepts, evaluate): its own settings, its input's
    fingerprint and a digest of the videos it reduces over (ids and labels): a rerun over the
    same inputs with the same settings skips its finished units."""
    digest = hashlib.sha256("\n".join(f"{v}\t{k}" for v, k in sorted(videos, key=str)).encode()).hexdigest()[:16]
    return _canonical({"upstream": hashlib.sha256(upstream.encode()).hexdigest()[:16], "settings": settings,
                       "videos": digest})


def class_partition(label: Optional[str]) -> str:
    """The class partition a video's rows go to (activations/<layer>/<class>/, ...)."""
    return label if label is not None else UNLABELLED


def unit_key(*names: str) -> str:
    """A unit's file-safe name from its keys (a class and a layer): a short digest."""
    return hashlib.sha256("\0".join(names).encode()).hexdigest()[:12]


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


class RunFolder:
    """One run folder. `run_id` names the writing run (its part files carry it).

    A RunFolder travels to Ray tasks and actors (without the driver's lease): there, before
    each write, it checks that the lease file still names its run, so a worker of a driver
    that lost the folder writes nothing.
    """

    def __init__(self, root: str, run_id: Optional[str] = None) -> None:
        self.root = str(root)
        self.run_id = run_id
        self.lease: Any = None  # pipeline.lease.Lease while a driver holds the folder
        self._worker = False
        self._index: Optional[dict[str, tuple[str, int]]] = None

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "run_id": self.run_id}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"], state["run_id"])  # type: ignore[misc]
        self._worker = True

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

    def read_videos(self, columns: Optional[list[str]] = None) -> pa.Table:
        return io.read_table(self.path(VIDEOS), columns=columns)

    def video_rows(self, video_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The videos.parquet rows of a few videos, in the order asked."""
        t = self.read(VIDEOS, filter=pc.is_in(pc.field("video_id"), pa.array(list(video_ids), type=pa.string())))
        by_id = {r["video_id"]: r for r in t.to_pylist()}
        return [by_id[v] for v in video_ids if v in by_id]

    def videos_fingerprint(self) -> str:
        return (io.read_schema(self.path(VIDEOS)).metadata or {}).get(b"settings", b"").decode()

    def write_videos(self, table: pa.Table, fingerprint: str) -> pa.Table:
        self._check_lease()
        table = table.cast(schemas.VIDEOS).replace_schema_metadata({"settings": fingerprint})
        io.write_table(table, self.path(VIDEOS))
        return table

    def record_failures(self, failures: dict[str, str], stage: str) -> pa.Table:
        """Mark videos that failed in `stage` in videos.parquet (they stay rows, with the reason);
        returns the table. Idempotent: a failure already recorded is left as it is."""
        table = self.read_videos()
        if not failures:
            return table
        ids = table.column("video_id")
        hit = pc.and_(pc.is_in(ids, pa.array(list(failures))), pc.equal(table.column("status"), schemas.OK))
        if not pc.any(hit).as_py():
            return table
        errors = pa.array([failures.get(v) for v in ids.to_pylist()], type=pa.string())
        table = table.set_column(table.schema.get_field_index("status"), "status",
                                 pc.if_else(hit, schemas.FAILED, table.column("status")))
        table = table.set_column(table.schema.get_field_index("error"), "error",
                                 pc.if_else(hit, errors, table.column("error")))
        table = table.set_column(table.schema.get_field_index("failed_stage"), "failed_stage",
                                 pc.if_else(hit, stage, table.column("failed_stage")))
        return self.write_videos(table, self.videos_fingerprint())

    # --- units of work: a stage's outputs in parts, and the marker that says a unit is done ----

    def part_name(self, unit: str) -> str:
        """The file name of a unit's parts: the run's id and the unit's own name, so two
        writers (or two units) never collide."""
        assert self.run_id, "a RunFolder writes parts only with a run_id"
        return f"part-{self.run_id}-{unit}.parquet"

    def write_unit(self, stage: str, unit: str, outputs: Sequence[tuple[str, Any]],
                   markers: Sequence[dict[str, Any]], fingerprint: str) -> str:
        """One unit of work, written by whoever did it: its part of each output dataset
        (`outputs`: (folder under the run, a table, or a list of tables: one row group each);
        a folder may be a partition such as `activations/layer=x/class=y`), then its marker
        rows in `_done/<stage>/` (written last: the unit is done). Returns the part's name."""
        name = self.part_name(unit)
        for folder, tables in outputs:
            self._check_lease()
            groups = [tables] if isinstance(tables, pa.Table) else list(tables)
            meta = {**(groups[0].schema.metadata or {}), b"settings": fingerprint.encode()}
            io.write_row_groups([t.replace_schema_metadata(meta) for t in groups], self.path(folder, name))
        rows = [{"unit": unit, "part": name, "video_id": None, "status": schemas.OK, "error": None,
                 "row_group": None, "record": None, **m, "settings": fingerprint} for m in markers]
        for r in rows:
            if r["record"] is not None and not isinstance(r["record"], str):
                r["record"] = json.dumps(r["record"], default=_json_default)
        self._check_lease()
        io.write_table(pa.Table.from_pylist(rows, schema=schemas.MARKERS), self.path(DONE, stage, name))
        return name

    def done_units(self, stage: str, data: Sequence[str], fingerprint: str, what: str,
                   stale: str = "raise") -> pa.Table:
        """The marker rows of a stage's finished units made with this fingerprint (read in
        parallel, one table). Parts of the `data` datasets without their marker are crash
        leftovers and are removed, so their units are done again. Markers made with other
        settings: `stale="raise"` stops with an error (the folder would mix settings),
        `"discard"` removes them and their parts (a reduction recomputed with new settings)."""
        files = io.part_files(self.path(DONE, stage))
        table = (io.read_files(files) if files else pa.Table.from_pylist([], schema=schemas.MARKERS)).cast(
            schemas.MARKERS)
        other = pc.not_equal(table.column("settings"), fingerprint)
        if table.num_rows and pc.any(other).as_py():
            if stale == "raise":
                raise RunFolderError(f"{self.path(DONE, stage)} holds units made with other {what} settings; use a "
                                     f"new run.output_dir (or delete {self.path(DONE, stage)} and "
                                     f"{', '.join(self.path(d) for d in data)})")
            for name in set(table.filter(other).column("part").to_pylist()):
                io.remove(self.path(DONE, stage, name))
            table = table.filter(pc.invert(other))
        complete = set(table.column("part").to_pylist())
        for dataset in data:
            for path in io.part_files(self.path(dataset)):
                if os.path.basename(path) not in complete:
                    io.remove(path)
        return table

    def check_owner(self) -> None:
        """In a worker: stop unless the lease file still names this run (or names none)."""
        try:
            holder = io.read_json(self.path(LEASE)).get("run_id")
        except (FileNotFoundError, OSError, ValueError):
            return
        if holder != self.run_id:
            raise RunFolderError(f"run {self.run_id} no longer holds {self.root} (run {holder!r} does): "
                                 "this worker writes nothing")

    def write_table(self, name: str, table: pa.Table) -> None:
        """A whole-run table (concepts.parquet, ...), replaced atomically."""
        self._check_lease()
        io.write_table(table, self.path(name))

    def write_bytes(self, name: str, data: bytes) -> None:
        self._check_lease()
        io.write_bytes(data, self.path(name))

    def write_with(self, name: str, write: Any) -> None:
        """A file a library writes itself (`write(local_path)`), atomically (`io.write_with`)."""
        self._check_lease()
        io.write_with(self.path(name), write)

    def write_json(self, name: str, obj: Any) -> None:
        self._check_lease()
        io.write_json(obj, self.path(name))

    def read(self, dataset: str, columns: Optional[list[str]] = None, filter: Any = None) -> pa.Table:
        """A dataset (a table, or a folder of parts and partitions) as one table."""
        if dataset.endswith(".parquet"):
            table = io.read_table(self.path(dataset), columns=columns)
            return table if filter is None else table.filter(filter)
        return io.read_parts(self.path(dataset), columns=columns, filter=filter)

    def count_equal(self, dataset: str, column: str, value: Any) -> int:
        """Rows of a dataset folder whose `column` equals `value`, counted batch by batch."""
        return io.count_equal(io.part_files(self.path(dataset)), column, value)

    def _check_lease(self) -> None:
        if self.lease is not None:
            self.lease.check()
        elif self._worker:
            self.check_owner()

    # --- label volumes and supervoxels, one video at a time ------------------------------------

    def label_index(self) -> dict[str, tuple[str, int]]:
        """Where each segmented video's label volumes are: video_id -> (part file name, row
        group), from the segment stage's markers (read once per RunFolder)."""
        if self._index is None:
            files = io.part_files(self.path(DONE, "segment"))
            t = io.read_files(files, columns=["video_id", "part", "row_group", "status"]) if files else None
            self._index = {} if t is None else {
                v: (p, g) for v, p, g, s in zip(*(t.column(c).to_pylist() for c in ("video_id", "part", "row_group",
                                                                                     "status")))
                if s == schemas.OK and g is not None}
        return self._index

    def locate(self, video_id: str) -> tuple[str, int]:
        where = self.label_index().get(video_id)
        if where is None:
            raise KeyError(f"video {video_id!r} has no label volumes in {self.root} (not segmented, or it failed)")
        return where

    def label_volumes(self, video_ids: Sequence[str],
                      where: Optional[dict[str, tuple[str, int]]] = None) -> dict[str, np.ndarray]:
        """The label volumes uint16 [R, L, H, W] of several videos: one row group each (`where`:
        their locations, as `label_index` gives them; read from the markers when not given)."""
        from pipeline.segmentation.supervoxels import stack_label_volumes

        out: dict[str, np.ndarray] = {}
        by_part: dict[str, list[tuple[str, int]]] = {}
        for v in video_ids:
            part, group = (where or {}).get(v) or self.locate(v)
            by_part.setdefault(part, []).append((v, group))
        for part, wanted in by_part.items():
            table = io.read_row_groups(self.path(LABEL_VOLUMES, part), sorted({g for _, g in wanted}))
            out.update(stack_label_volumes(table.to_pylist()))
        return {v: out[v] for v in video_ids if v in out}

    def label_volume(self, video_id: str, resolution: int) -> np.ndarray:
        """The SLIC label volume uint16 [L, H, W] of one video at one resolution."""
        volumes = self.label_volumes([video_id])[video_id]
        if not 0 <= resolution < len(volumes):
            raise KeyError(f"no label volume for video {video_id!r} at resolution {resolution} in {self.root}")
        return volumes[resolution]

    def supervoxel_mask(self, video_id: str, supervoxel_id: int) -> np.ndarray:
        """The voxels of one supervoxel: bool [T, H, W] in clip coordinates (the clip's frames
        are source frames `clip_frame_indices` of videos.parquet, resized to clip_height x
        clip_width)."""
        part, group = self.locate(video_id)
        t = io.read_row_groups(self.path(SUPERVOXELS, part), [group], columns=["supervoxel_id", "resolution", "label"])
        t = t.filter(pc.equal(t.column("supervoxel_id"), int(supervoxel_id)))
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
        if target_class is None:
            rows = self.video_rows([video_id]) if self.exists(VIDEOS) else []
            target_class = rows[0]["label"] if rows else None
        rows = self.voxel_importance_rows(video_id, target_class)
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

    def voxel_importance_rows(self, video_id: str, target_class: Optional[str]) -> list[dict[str, Any]]:
        """A video's voxel-importance rows: within its class's partitions, the row group whose
        statistics hold it (footers, then one row group per layer)."""
        root = self.path(VOXEL_IMPORTANCE)
        files = io.part_files(io.join(root, partition(target_class=target_class))) if target_class else []
        files = files or io.part_files(root)
        if not files:
            return []
        return io.read_files(files, filter=pc.field("video_id") == video_id).to_pylist()


def partition(**keys: Optional[str]) -> str:
    """The partition folder of a dataset for these keys, in the order given (`layer`,
    `target_class`): one folder level per key, named by its value, percent-encoded (class names
    hold spaces, slashes, apostrophes). Plain names, not Hive's `key=value`: a reader that
    guesses Hive partitions (pandas, DuckDB) would add the keys again as columns."""
    def name(v: Optional[str]) -> str:
        q = quote(str(v), safe="")
        return "%2E" + q[1:] if q.startswith(".") else q  # never "." or "..", never hidden

    return "/".join(name(v) for v in keys.values())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
