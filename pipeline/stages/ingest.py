"""Step 1, ingest: resolve the corpus into one row per input video, read each video's container
metadata in Ray tasks (units of 4 x `segment.videos_per_part` videos, each writing its rows to
_videos/ and its marker: an ingest of a large corpus resumes after a crash); then a task writes
videos.parquet in the manifest's order (ok, or failed with the reason). Reused as it is when the
inputs and the clip settings are unchanged."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipeline import io, schemas
from pipeline.config import Config, ConfigError
from pipeline.data.corpus import resolve_corpus
from pipeline.data.ingest import ingest_video, stat_identity, video_row
from pipeline.data.video import ClipSpec, DecodeLimits
from pipeline.models.registry import model_class_names
from pipeline.orchestration.fanout import map_tasks
from pipeline.orchestration.runtime import Progress
from pipeline.params import ParameterError
from pipeline.run_folder import VIDEOS, RunFolder
from pipeline.stages.base import Job, one_at_a_time, per_second, unit_batches, unit_error

log = logging.getLogger("pipeline")

INGESTED = "_videos"  # each unit's videos.parquet rows, until videos.parquet is written


def run(job: Job) -> None:
    job.begin("ingest")
    cfg, folder = job.cfg, job.folder
    try:
        corpus = resolve_corpus(job.c["dataset"])
    except ParameterError as e:
        raise ConfigError.from_parameter("dataset", e) from None
    check_corpus(corpus.rows, cfg, model_class_names(job.c["model"]))
    spec, limits = cfg.clip, cfg.decode
    fingerprint = job.fingerprints["ingest"]
    mode, retry_failed = cfg.dataset.identity, cfg.run.retry_failed
    ids = [r["video_id"] for r in corpus.rows]
    paths = [r["path"] for r in corpus.rows]
    identified = folder.exists(VIDEOS) and "identity" in io.read_schema(folder.path(VIDEOS)).names  # else: redone
    if identified and folder.videos_fingerprint() == fingerprint:
        previous = folder.read_videos(["video_id", "path", "size", "mtime_ns", "failed_stage", "retryable"])
        same_inputs = all(previous.column(k).to_pylist() == [r[k] for r in corpus.rows]
                          for k in ("video_id", "path", "size", "mtime_ns"))
        again = pc.and_(pc.equal(previous.column("failed_stage"), "ingest"),
                        pc.fill_null(previous.column("retryable"), False) if not retry_failed else True)
        if same_inputs and not pc.any(again).as_py():
            log.info("ingest: videos.parquet already covers these %d videos, unchanged, with these clip settings; "
                     "reused", len(ids))
            _count(job, _counts(folder.read_videos(["label", "status"])), reused=True, retried=0)
            return
    log.info("ingest: %d videos in %d classes from %s", len(ids), len(corpus.classes),
             cfg.dataset.root or cfg.dataset.csv or "a list of files")
    done = folder.done_units("ingest", [INGESTED], fingerprint, "clip", stale="discard",
                             videos={r["video_id"]: listing(r) for r in corpus.rows}, retry_failed=retry_failed,
                             whole_units=True)
    have = set(done.column("video_id").to_pylist())
    todo = [r for r in corpus.rows if r["video_id"] not in have]
    if have:
        log.info("ingest: %d videos already read by an earlier run, %d to go", len(ids) - len(todo), len(todo))
    units = {f"{n:05d}": rows for n, rows in enumerate(unit_batches(todo, cfg.segment.videos_per_part * 4))}
    progress = Progress("ingest", len(todo))
    items = ((name, (folder, name, rows)) for name, rows in list(units.items()))
    for out in map_tasks(ingest_unit, items, spec, fingerprint, limits, mode, progress=None,
                         label_selector=job.cpu_selector, timeout_s=limits.unit_timeout_s,
                         split=one_at_a_time(folder, units, [INGESTED], by_row=True)):
        progress.update(len(units[out.key]))
        if not out.ok:
            rows = [video_row(r, spec, unit_error("ingest", out.error)) for r in units[out.key]]
            for r in rows:
                r["retryable"] = True
            folder.write_unit("ingest", out.key, [(INGESTED, _rows_table(rows))], _markers(units[out.key], rows),
                              fingerprint)
    where = {"label_selector": job.cpu_selector} if job.cpu_selector else {}
    summary = ray.get(write_manifest.options(**where).remote(folder, ids, paths, fingerprint))
    for vid, why in summary.pop("failures"):
        log.warning("ingest: %r failed: %s", vid, why)
    _count(job, summary, reused=False, retried=folder.redone["ingest"]["videos_retried"])


def _some(names: Sequence[str], n: int = 6) -> str:
    return ", ".join(list(names)[:n]) + (", ..." if len(names) > n else "")


def check_corpus(rows: list[dict[str, Any]], cfg: Config,
                 model_classes: Sequence[str] = ()) -> None:
    """Before any work: a corpus with no video, or, for a job that explains classes (the
    concepts stage), fewer than two classes with a video (the random sets are drawn from the
    other classes), or fewer than two that the model knows (`model_classes`, when known: a
    class it does not know has no logit to explain) stops with the config key to change; a
    class with one video, and classes the model does not know (their videos serve only in
    the random sets), are warned of."""
    d = cfg.dataset
    key = {"csv": "csv", "list": "videos"}.get(d.kind, "root")
    filters = ", ".join(f"dataset.{k}={getattr(d, k)}" for k in ("classes", "splits") if getattr(d, k))
    if not rows:
        raise ConfigError(f"dataset.{key}", "holds no video" + (f" that {filters} keeps" if filters else ""),
                          getattr(d, key))
    if "concepts" not in cfg.run.stages:
        return
    per_class: dict[str, int] = {}
    for r in rows:
        if r["error"] is None:
            per_class[r["label"]] = per_class.get(r["label"], 0) + 1
    if len(per_class) < 2:
        raise ConfigError("dataset.classes", f"concepts need videos of at least two classes (a class's random sets "
                                             f"are the other classes' videos); the corpus has {per_class}",
                          d.classes)
    unknown = sorted(set(per_class) - set(model_classes)) if model_classes else []
    if len(per_class) - len(unknown) < 2:
        known = len(per_class) - len(unknown)
        raise ConfigError("model.class_names", f"the model knows {known} of "
                          f"the corpus's classes, and concepts need two it knows; not among its "
                          f"classes ({_some(model_classes)}): {_some(unknown)}. Name the model's "
                          "outputs (model.class_names) or explain a model trained on these classes",
                          cfg.model.class_names)
    if unknown:
        log.warning("ingest: the model does not know %d of the corpus's classes (%s): their videos "
                    "serve only in the random sets", len(unknown), _some(unknown))
    for k, n in sorted(per_class.items()):
        if n < 2:
            log.warning("ingest: class %r has %d video: concepts skip it (they need one to discover with and one to "
                        "score; add videos or leave it out with dataset.classes)", k, n)


def listing(row: dict[str, Any]) -> str:
    """What ingest's markers check a video by: its path and its listing (size, time)."""
    return f"{row['path']}\0{stat_identity(row)}"


def _markers(manifest: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"video_id": r["video_id"], "identity": listing(m), "status": r["status"], "error": r["error"],
             "retryable": r["retryable"]} for m, r in zip(manifest, rows)]


@ray.remote(num_cpus=1, max_retries=2)
def write_manifest(folder: RunFolder, ids: list[str], paths: list[str], fingerprint: str) -> dict[str, Any]:
    """videos.parquet from the units' rows, in the manifest's order (in a task: in the driver,
    writing a 4,000-row table held 10 MB of its memory after it was written, bench/scale.py);
    returns its counts and failures."""
    table = folder.write_videos(manifest_order(folder.read(INGESTED), ids, paths), fingerprint)
    return {**_counts(table), "failures": [(r["video_id"], r["error"]) for r in table.filter(
        pc.equal(table.column("status"), schemas.FAILED)).select(["video_id", "error"]).to_pylist()]}


def ingest_unit(folder: RunFolder, unit: str, rows: list[dict[str, Any]], spec: ClipSpec,
                fingerprint: str, limits: DecodeLimits, identity: str) -> int:
    """One unit (in a Ray task): each video's row from its container, written with the marker."""
    out = [ingest_video(r, spec, limits, identity) for r in rows]
    folder.write_unit("ingest", unit, [(INGESTED, _rows_table(out))], _markers(rows, out), fingerprint)
    return len(out)


def _rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    for r in rows:
        r["failed_stage"] = "ingest" if r["status"] == schemas.FAILED else None
    return pa.Table.from_pylist(rows, schema=schemas.VIDEOS)


def manifest_order(table: pa.Table, ids: list[str], paths: list[str]) -> pa.Table:
    """The ingested rows of the manifest's videos, one each, in the manifest's order."""
    position = {(v, p): i for i, (v, p) in enumerate(zip(ids, paths))}
    keys = zip(table.column("video_id").to_pylist(), table.column("path").to_pylist())
    pos = np.asarray([position.get(k, -1) for k in keys], dtype=np.int64)
    keep = np.flatnonzero(pos >= 0)
    first = keep[np.unique(pos[keep], return_index=True)[1]]  # one row per manifest entry
    order = first[np.argsort(pos[first], kind="stable")]
    if len(order) != len(ids):
        raise RuntimeError(f"ingest: {len(ids) - len(order)} videos of the manifest have no ingested row")
    return table.take(pa.array(order))


def _counts(table: pa.Table) -> dict[str, int]:
    failed = pc.sum(pc.equal(table.column("status"), schemas.FAILED)).as_py() or 0
    return {"videos": table.num_rows, "failed": int(failed), "classes": len(pc.unique(table.column("label")))}


def _count(job: Job, counts: dict[str, int], reused: bool, retried: int) -> None:
    n, failed = counts["videos"], counts["failed"]
    wall = job.wall("ingest")
    job.finish("ingest", reused=reused, videos_per_s=None if reused else per_second(n, wall),
               videos_in=n, videos_ok=n - failed, videos_failed=failed, videos_retried=retried)
    job.counts.update(videos_in=n, videos_ok=n - failed, videos_failed=failed, classes=counts["classes"])
