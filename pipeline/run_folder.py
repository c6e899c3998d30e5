"""The run folder: the one module that knows its names, its resume rules and its writers.

A run folder (`run.output_dir`, a local path or a pyarrow filesystem URI) holds one dataset per
stage output (docs/outputs.md). This module owns (with `pipeline.run_names`, every output's
name, and `pipeline.fingerprints`, the settings each stage's outputs depend on):

- units of work: whoever does a unit (a task, an actor) writes its parts, then its marker rows
  in `_done/<stage>/` with the stage's fingerprint (`write_unit`); a unit is done when its
  marker exists, and parts without one are crash leftovers, removed (`done_units`); part names
  carry the writing run's id and the unit's, so two writers never collide;
- what a rerun redoes: units whose videos changed, failures that may pass, files that do not
  read (`done_units`);
- failure records: a video that fails a stage stays a row of videos.parquet, with the reason;
- the lease (`pipeline.lease`): one live driver per folder;
- the readers of a finished run (label volumes, supervoxel masks, voxel importance).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import io, schemas
from pipeline.run_names import (  # noqa: F401 (the names are re-exported: one import for a stage)
    VIDEOS, SUPERVOXELS, LABEL_VOLUMES, ACTIVATIONS, PREDICTIONS, CONCEPTS, CONCEPT_IMPORTANCE, CONCEPT_MEMBERS, TCAV,
    CONCEPT_METRICS, EVALUATE_METRICS, REPORT_CLASSES, USER_CONCEPTS, CONCEPT_SENSITIVITY,
    VOXEL_IMPORTANCE, EVALUATION, REPORT, REPORT_INDEX, REPORT_ATLAS, CONCEPT_PRESENCE, RUN_JSON, LEASE,
    CLIP_ACTIVATIONS, RANDOMISED_GRADIENTS, DONE, UNLABELLED, ATLAS_TRAINED, ATLAS_ASSIGNMENTS, ATLAS_COUNTS,
    ATLAS_SHARDS, ATLAS_INDEX, ATLAS_LINKS, ATLAS_CONCEPTS, ATLAS_CLASS_CONCEPTS, ATLAS_MANIFEST, partition)
from pipeline.fingerprints import fingerprints, reduction_fingerprint, unit_key  # noqa: F401 (re-exported)
from pipeline.run_readers import RunReaders

log = logging.getLogger("pipeline")


class RunFolderError(RuntimeError):
    """The run folder cannot be used as asked (made with other settings, missing a stage's
    inputs, or in use by another driver); the message says what to do."""


class RunFolder(RunReaders):
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
        self.redone: dict[str, dict[str, int]] = {}  # done_units' counts, per stage

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
        table = _stamped(table.cast(schemas.VIDEOS), {b"settings": fingerprint.encode()})
        io.write_table(table, self.path(VIDEOS))
        return table

    def record_failures(self, failures: dict[str, tuple[str, bool]], stage: str) -> pa.Table:
        """Set which videos failed in `stage` in videos.parquet: those in `failures` ({video_id:
        (reason, retryable)}) fail (they stay rows, with the reason), unless an earlier stage
        failed them; those `stage` failed before and not now (tried again) are ok again.
        Returns the table; written only when something changed."""
        table = self.read_videos()
        ids, status, failed_stage = table.column("video_id"), table.column("status"), table.column("failed_stage")
        listed = pc.is_in(ids, value_set=pa.array(list(failures), type=pa.string()))
        mine = pc.fill_null(pc.equal(failed_stage, stage), False)
        hit = pc.and_(listed, pc.or_(pc.equal(status, schemas.OK), mine))
        healed = pc.and_(mine, pc.invert(listed))
        if not pc.any(pc.or_(hit, healed)).as_py():
            return table
        listed_ids = ids.to_pylist()
        errors = pa.array([failures[v][0] if v in failures else None for v in listed_ids], type=pa.string())
        again = pa.array([bool(failures[v][1]) if v in failures else None for v in listed_ids], type=pa.bool_())
        null_s, null_b = pa.nulls(len(ids), pa.string()), pa.nulls(len(ids), pa.bool_())
        columns = {"status": (pa.array([schemas.FAILED] * len(ids)), pa.array([schemas.OK] * len(ids))),
                   "error": (errors, null_s), "retryable": (again, null_b),
                   "failed_stage": (pa.array([stage] * len(ids)), null_s)}
        for name, (failed, ok) in columns.items():
            col = pc.if_else(hit, failed, pc.if_else(healed, ok, table.column(name)))
            table = table.set_column(table.schema.get_field_index(name), name, col)
        return self.write_videos(table, self.videos_fingerprint())

    def remove_parts(self, data: Sequence[str], unit: str) -> None:
        """What a unit wrote into the `data` datasets (their partitions included) before it
        failed or was stopped (it has no marker)."""
        name = self.part_name(unit)
        for path in (p for d in data for p in io.part_files(self.path(d)) if os.path.basename(p) == name):
            self._check_lease()
            io.remove(path)

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
            settings = {b"settings": fingerprint.encode()}
            io.write_row_groups([_stamped(t, settings) for t in groups], self.path(folder, name))
        rows = [{"unit": unit, "part": name, "video_id": None, "status": schemas.OK, "error": None,
                 "row_group": None, "record": None, **m, "settings": fingerprint,
                 "outputs": [folder for folder, _ in outputs]} for m in markers]
        for r in rows:
            if r["record"] is not None and not isinstance(r["record"], str):
                r["record"] = json.dumps(r["record"], default=_json_default)
        self._check_lease()
        io.write_table(_stamped(pa.Table.from_pylist(rows, schema=schemas.MARKERS)), self.path(DONE, stage, name))
        return name

    def done_units(self, stage: str, data: Sequence[str], fingerprint: str, what: str, stale: str = "raise",
                   videos: Optional[dict[str, Optional[str]]] = None, retry_failed: bool = False,
                   whole_units: bool = False) -> pa.Table:
        """The marker rows of a stage's finished units made with this fingerprint, checked:

        - a marker that cannot be read, or whose parts are missing or unreadable (footer
          check), is removed with a warning naming the file: its unit is done again;
        - markers made with other settings: `stale="raise"` stops with an error (the folder
          would mix settings), `"discard"` removes them (a reduction recomputed);
        - `videos` (the video stages: each video's identity now, `pipeline.data.ingest`): a unit
          with a video whose identity changed, or that is no longer in the corpus, is redone
          whole; a failed video is tried again (its row leaves the marker) when it changed, when
          its failure is retryable or with `retry_failed` (`whole_units`: its unit is redone
          whole: ingest's failed rows are in its parts);
        - parts of the `data` datasets without a marker, and `.part` files, are leftovers of a
          crash and are removed.
        `self.redone[stage]["videos_retried"]` counts the failed videos tried again."""
        table = self._read_markers(stage)
        other = pc.not_equal(table.column("settings"), fingerprint)
        if table.num_rows and pc.any(other).as_py():
            if stale == "raise":
                raise RunFolderError(f"{self.path(DONE, stage)} holds units made with other {what} settings (or by "
                                     "another version of the pipeline's fingerprints); use a "
                                     f"new run.output_dir (or delete {self.path(DONE, stage)} and "
                                     f"{', '.join(self.path(d) for d in data)})")
            self._drop_markers(stage, set(table.filter(other).column("part").to_pylist()))
            table = table.filter(pc.invert(other))
        retried = 0
        if videos is not None and table.num_rows:
            table, retried = self._redo_changed(stage, table, videos, retry_failed, whole_units)
        listed = {p for d in data for p in io.part_files(self.path(d))}
        table = self._check_parts(stage, table, listed)
        complete = set(table.column("part").to_pylist())
        leftovers = [p for p in listed if os.path.basename(p) not in complete]
        leftovers += [p for d in [*data, f"{DONE}/{stage}"] for p in io.leftover_files(self.path(d))]
        if leftovers:
            self._check_lease()
            for path in leftovers:
                io.remove(path)
        self.redone[stage] = {"videos_retried": retried}
        self._index = None  # the label index is read again from the markers left
        return table

    def _read_markers(self, stage: str) -> pa.Table:
        """A stage's markers as one table; one that cannot be read is removed, with a warning."""
        def read(path: str) -> Optional[pa.Table]:
            try:
                t = io.read_table(path)
            except (OSError, ValueError, pa.ArrowException) as e:
                log.warning("%s: the marker %s cannot be read (%s): its unit is done again", stage, path, e)
                return None
            for f in schemas.MARKERS:  # markers written before a column existed
                if f.name not in t.column_names:
                    t = t.append_column(f.name, pa.nulls(t.num_rows, f.type))
            return t.select(schemas.MARKERS.names).cast(schemas.MARKERS)

        files = io.part_files(self.path(DONE, stage))
        tables = list(io.map_files(read, files))
        bad = [f for f, t in zip(files, tables) if t is None]
        if bad:
            self._check_lease()
            for f in bad:
                io.remove(f)
        good = [t for t in tables if t is not None]
        return pa.concat_tables(good) if good else schemas.MARKERS.empty_table()

    def _drop_markers(self, stage: str, parts: set[str]) -> None:
        if parts:
            self._check_lease()
        for name in parts:
            io.remove(self.path(DONE, stage, name))

    def _redo_changed(self, stage: str, table: pa.Table, videos: dict[str, Optional[str]], retry_failed: bool,
                      whole_units: bool) -> tuple[pa.Table, int]:
        """`done_units`'s identity rules (see there): the markers left, the failed videos retried."""
        ids = table.column("video_id")
        keys = pa.array(list(videos), type=pa.string())
        at = pc.index_in(ids, value_set=keys)
        now = pc.take(pa.array(list(videos.values()), type=pa.string()), at)
        has_video, known = pc.is_valid(ids), pc.is_valid(at)
        gone = pc.and_(has_video, pc.invert(known))
        changed = pc.and_(known, pc.fill_null(pc.not_equal(table.column("identity"), now), True))
        failed = pc.equal(table.column("status"), schemas.FAILED)
        retry = pc.and_(failed, pc.or_(pc.or_(changed, gone), pc.fill_null(table.column("retryable"), False)))
        if retry_failed:
            retry = failed
        redo = pc.and_(pc.invert(failed), pc.or_(changed, gone))
        if whole_units:
            redo = pc.or_(redo, retry)
        drop = set(table.filter(redo).column("part").to_pylist())
        self._drop_markers(stage, drop)
        keep = pc.invert(pc.is_in(table.column("part"), value_set=pa.array(sorted(drop), type=pa.string())))
        if drop:
            log.info("%s: %d unit(s) to redo: their videos changed or left the corpus", stage, len(drop))
        rewrite = sorted(set(table.filter(pc.and_(retry, keep)).column("part").to_pylist()))
        if rewrite:  # those markers without their failed videos that are tried again (one pass over the rows)
            rest = table.filter(pc.and_(pc.is_in(table.column("part"), value_set=pa.array(rewrite, pa.string())),
                                        pc.invert(retry)))
            at: dict[str, list[int]] = {}
            for i, name in enumerate(rest.column("part").to_pylist()):
                at.setdefault(name, []).append(i)
            self._check_lease()
            for name in rewrite:
                if name in at:
                    io.write_table(rest.take(pa.array(at[name])), self.path(DONE, stage, name))
                else:
                    io.remove(self.path(DONE, stage, name))
        retried = int(pc.sum(pc.and_(retry, keep)).as_py() or 0)
        if retried:
            log.info("%s: %d failed video(s) to try again (changed, or their failure may pass: "
                     "run.retry_failed=true tries every one)", stage, retried)
        return table.filter(pc.and_(keep, pc.invert(retry))), retried

    def _check_parts(self, stage: str, table: pa.Table, listed: set[str]) -> pa.Table:
        """The markers whose parts are all there and readable (footers); the others removed."""
        parts = pc.unique(table.column("part"))
        first = pc.index_in(parts, value_set=table.column("part"))  # each unit's first marker row
        outputs = table.column("outputs").take(first).to_pylist()
        wanted = {p: [self.path(o, p) for o in (os_ or [])] for p, os_ in zip(parts.to_pylist(), outputs)}
        paths = [p for ps in wanted.values() for p in ps if p in listed]
        readable = dict(zip(paths, io.map_files(_footer_ok, paths)))
        bad = {}
        for part, ps in wanted.items():
            why = next((f"{p} is missing" for p in ps if p not in listed), None) or next(
                (f"{p} cannot be read ({readable[p]})" for p in ps if readable[p] is not True), None)
            if why:
                bad[part] = why
                log.warning("%s: %s: its unit is done again", stage, why)
        self._drop_markers(stage, set(bad))
        return table.filter(pc.invert(pc.is_in(table.column("part"), value_set=pa.array(sorted(bad), pa.string()))))

    def check_owner(self) -> None:
        """In a worker: stop unless the lease file still names this run (its driver holds the
        folder while it runs; a lease gone or torn is not this run's)."""
        try:
            holder = io.read_json(self.path(LEASE)).get("run_id")
        except (OSError, ValueError, AttributeError) as e:
            raise RunFolderError(f"run {self.run_id} cannot see its lease on {self.root} ({type(e).__name__}: {e}): "
                                 "this worker writes nothing") from None
        if holder != self.run_id:
            raise RunFolderError(f"run {self.run_id} no longer holds {self.root} (run {holder!r} does): "
                                 "this worker writes nothing")

    def check_format(self) -> None:
        """Before any work: refuse a folder whose run.json names another output format
        (`schemas.FORMAT_VERSION`; a folder from before formats were recorded goes on, and its
        stages' fingerprints decide)."""
        try:
            old = io.read_json(self.path(RUN_JSON)) if self.exists(RUN_JSON) else {}
        except (ValueError, OSError):
            return
        made = old.get("format_version")
        if made is not None and made != schemas.FORMAT_VERSION:
            versions = old.get("versions") or {}  # "pipeline" before the distribution was ace3d
            by = versions.get("ace3d") or versions.get("pipeline") or "another version"
            raise RunFolderError(f"{self.root} holds outputs of format {made} (written by {by}); "
                                 f"this code writes format {schemas.FORMAT_VERSION}: write to a new "
                                 "run.output_dir, or finish this folder with the code that made it")

    def write_table(self, name: str, table: pa.Table) -> None:
        """A whole-run table (concepts.parquet, ...), replaced atomically."""
        self._check_lease()
        io.write_table(_stamped(table), self.path(name))

    def write_bytes(self, name: str, data: bytes) -> None:
        self._check_lease()
        io.write_bytes(data, self.path(name))

    def write_with(self, name: str, write: Any) -> None:
        """A file a library writes itself (`write(local_path)`), atomically (`io.write_with`)."""
        self._check_lease()
        io.write_with(self.path(name), write)

    def remove(self, name: str) -> None:
        """Delete a file of the run (the lease checked first, as before a write)."""
        self._check_lease()
        io.remove(self.path(name))

    def clear(self, name: str) -> None:
        """Delete what a folder of the run holds (the lease checked first)."""
        self._check_lease()
        fs, path = io.resolve(self.path(name))
        fs.delete_dir_contents(path, missing_dir_ok=True)

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


def _stamped(table: pa.Table, extra: Optional[dict[bytes, bytes]] = None) -> pa.Table:
    """The table with its own metadata, `extra` and the run's format and code version
    (`schemas.file_metadata`): what every Parquet file of a run carries."""
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **(extra or {}),
                                          **schemas.file_metadata()})


def _footer_ok(path: str) -> Any:
    """True when a Parquet file's footer reads, else why not."""
    try:
        io.read_metadata(path)
        return True
    except (OSError, ValueError, pa.ArrowException) as e:
        return f"{type(e).__name__}: {e}"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
