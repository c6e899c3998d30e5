"""What every stage gets (`Job`) and the small things every stage does with it."""

from __future__ import annotations

import logging
import math
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schemas
from pipeline.data.video import retryable
from pipeline.orchestration.runtime import cluster_cpus, label_selector
from pipeline.run_folder import DONE, RunFolder

if TYPE_CHECKING:
    from pipeline.config import Config

log = logging.getLogger("pipeline")


@dataclass
class Job:
    """One run of the job, as its stages see it.

    cfg: the typed config (`pipeline.config.Config`: what the stages read); c: the same, resolved,
    as plain dicts (what run.json records and the fingerprints hash); folder: the run folder;
    record: run.json as it is being written (a stage adds `record["stages"][name]` and updates `record["counts"]`);
    window: the model's input frames; fingerprints: per resumable stage, the settings its
    outputs depend on (`pipeline.run_folder.fingerprints`); module: the object-store reference
    of an nn.Module handed to the Python API (None: the config names the model).
    """

    cfg: Config
    c: dict[str, Any]
    folder: RunFolder
    record: dict[str, Any]
    window: int
    fingerprints: dict[str, str]
    module: Any = None
    cav_trainer: Any = None  # a user's CAV trainer (concepts.cav_model user:<name>@<digest>)
    started: dict[str, float] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, Any]:
        return self.record["counts"]

    @property
    def cpu_selector(self) -> dict[str, str]:
        """The Ray label selector of the CPU stages' tasks (`ray.cpu_label_selector`)."""
        return label_selector(self.cfg.ray.cpu_label_selector)

    def record_failures(self, failures: dict[str, tuple[str, bool]], stage: str) -> None:
        """Set the videos that failed in `stage` in videos.parquet ({video_id: (reason,
        retryable)}: the stage's markers, this run's and earlier ones), and count them."""
        status = self.folder.record_failures(failures, stage).column("status")
        self.counts.update(videos_ok=int(pc.sum(pc.equal(status, schemas.OK)).as_py() or 0),
                           videos_failed=int(pc.sum(pc.equal(status, schemas.FAILED)).as_py() or 0))

    def begin(self, stage: str) -> None:
        self.started[stage] = time.monotonic()

    def wall(self, stage: str) -> float:
        return time.monotonic() - self.started[stage]

    def finish(self, stage: str, **entry: Any) -> dict[str, Any]:
        """Record the stage's run.json entry: its wall time first, then `entry`, and the
        driver's peak resident memory so far (what bounds the driver's state)."""
        self.record["stages"][stage] = {"wall_s": round(self.wall(stage), 3), **entry,
                                        "driver_peak_rss_mb": driver_peak_rss_mb()}
        return self.record["stages"][stage]


def ground_truth_root(cfg: Config) -> Optional[str]:
    """The synthetic corpus's folder (its actor masks are the ground truth), else None."""
    return cfg.dataset.root if cfg.dataset.kind == "synthetic" else None


def driver_peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports KB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def per_second(n: int, seconds: float) -> Optional[float]:
    return round(n / seconds, 3) if seconds > 0 else None


def unit_batches(video_ids: list[str], per_part: int, min_units: Optional[int] = None) -> list[list[str]]:
    """The videos in units of at most `per_part`, and at least two units per CPU of the cluster
    while there are videos enough (so a small corpus still keeps every core busy)."""
    if not video_ids:
        return []
    min_units = min_units if min_units is not None else 2 * cluster_cpus()
    size = max(1, min(per_part, math.ceil(len(video_ids) / min_units)))
    return [video_ids[i:i + size] for i in range(0, len(video_ids), size)]


class VideoRows:
    """A videos table with an index by id: the driver keeps the Arrow table (not a dict per
    video) and takes a unit's rows by position, without a scan of the table per unit."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.ids = table.column("video_id").to_pylist()
        self.position = {v: i for i, v in enumerate(self.ids)}

    def rows(self, video_ids: list[str]) -> list[dict[str, Any]]:
        """The rows of a few videos, in the order asked (what a unit's task gets)."""
        return self.table.take(pa.array([self.position[v] for v in video_ids], type=pa.int64())).to_pylist()


def one_at_a_time(folder: RunFolder, units: dict[str, list[Any]], data: list[str], by_row: bool = False) -> Any:
    """`map_tasks`'s (and the actor queue's) `split` for units of (folder, unit name, video
    rows, ...): a unit that failed as a whole (its worker lost more often than retried, or
    stopped at its time limit, `decode.unit_timeout_s`) loses what it wrote and becomes one
    unit per video, named after it, added to `units` (name -> video ids, or rows with
    `by_row`): one bad video fails alone."""
    def split(name: str, args: tuple) -> list[tuple[str, tuple]]:
        folder.remove_parts(data, name)  # what it wrote before it stopped (it has no marker)
        rows = args[2]
        if len(rows) < 2:
            return []
        out = []
        for i, row in enumerate(rows):
            units[f"{name}-{i:03d}"] = [row if by_row else row["video_id"]]
            out.append((f"{name}-{i:03d}", (args[0], f"{name}-{i:03d}", [row], *args[3:])))
        return out

    return split


def unit_error(what: str, error: str) -> str:
    """The reason recorded for the videos of a unit that failed as a whole (its task lost
    more often than retried, or stopped at its time limit, which the config key names)."""
    return f"{what} failed: {error}" + (" (decode.unit_timeout_s)" if error.startswith("timed out") else "")


def fail_unit(folder: RunFolder, stage: str, unit: str, rows: list[dict[str, Any]], error: str,
              fingerprint: str) -> None:
    """The marker of a unit that failed as a whole after `one_at_a_time` (one video, as a
    rule; `one_at_a_time` removed what it wrote): its videos failed with `error`, retryable
    (a lost worker, a time limit)."""
    folder.write_unit(stage, unit, [], [{"video_id": r["video_id"], "status": schemas.FAILED, "error": error,
                                         "retryable": True, "identity": r.get("identity")} for r in rows],
                      fingerprint)


def failed_marker(row: dict[str, Any], what: str, e: BaseException) -> dict[str, Any]:
    """The marker row of a video that failed alone in a unit, with whether a rerun retries it."""
    return {"video_id": row["video_id"], "status": schemas.FAILED, "error": f"{what} failed: {type(e).__name__}: {e}",
            "retryable": retryable(e), "identity": row.get("identity")}


def log_failures(stage: str, failures: dict[str, tuple[str, bool]], todo: list[str]) -> int:
    """Warn of the videos of `todo` that failed (names quoted: a name may hold anything);
    returns how many."""
    new = [v for v in todo if v in failures]
    for vid in new:
        log.warning("%s: %r failed: %s", stage, vid, failures[vid][0])
    return len(new)


def unit_failures(folder: RunFolder, stage: str) -> dict[str, tuple[str, bool]]:
    """The failed videos in a stage's markers, with their reasons and whether a rerun tries
    them again (the markers written by earlier runs of this folder included)."""
    if not folder.exists(DONE, stage):
        return {}
    t = folder.read(f"{DONE}/{stage}", columns=["video_id", "status", "error", "retryable"])
    t = t.filter(pc.equal(t.column("status"), schemas.FAILED))
    return {v: (e, bool(r)) for v, e, r in zip(*(t.column(c).to_pylist() for c in ("video_id", "error", "retryable")))}


def candidates(table: pa.Table) -> pa.Table:
    """The videos a stage after ingest works on: ingested ok (a later stage's failure may be
    tried again: the stage's markers say which)."""
    status, stage = table.column("status"), table.column("failed_stage")
    later = pc.and_(pc.is_valid(stage), pc.not_equal(stage, "ingest"))
    return table.filter(pc.or_(pc.equal(status, schemas.OK), pc.fill_null(later, False)))


def identities(table: pa.Table) -> dict[str, Optional[str]]:
    """{video_id: identity} of a videos table (what `RunFolder.done_units` checks; None for a
    table made before inputs had an identity: its videos count as changed)."""
    ids = table.column("video_id").to_pylist()
    known = "identity" in table.column_names
    return dict(zip(ids, table.column("identity").to_pylist() if known else [None] * len(ids)))
