"""The main job, `python -m pipeline`: the method's steps as Ray stages, top to bottom.

    ingest   resolve the corpus, decode every video's clip once -> videos.parquet

Every stage writes its output under `run.output_dir` and its wall time, throughput and
counts into `run.json`.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

import hydra
import pyarrow as pa
from omegaconf import DictConfig, OmegaConf

from pipeline import schemas
from pipeline.config import CONF_DIR, ConfigError, register_configs, to_plain, validate
from pipeline.data.corpus import resolve_corpus
from pipeline.data.ingest import ingest_video
from pipeline.data.video import ClipSpec
from pipeline.io import write_json, write_table
from pipeline.orchestration.runtime import Progress, init_ray, map_tasks

log = logging.getLogger("pipeline")

VERSIONED_PACKAGES = ("pipeline", "ray", "torch", "torchvision", "pytorchvideo", "scikit-image", "faiss-cpu",
                      "pyarrow", "numpy", "av", "hydra-core", "scikit-learn", "scipy")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def absolutise(cfg: DictConfig) -> None:
    """Relative paths in the config are taken from the current directory, once, in the driver:
    tasks and actors may run anywhere."""
    for key in ("run.output_dir", "dataset.root", "dataset.csv", "model.path"):
        value = OmegaConf.select(cfg, key)
        if value:
            OmegaConf.update(cfg, key, os.path.abspath(os.path.expanduser(str(value))))


def stage_ingest(c: dict[str, Any], run_dir: str, record: dict[str, Any]) -> pa.Table:
    """Step 1: one row per input video in videos.parquet, ok or failed with the reason."""
    t0 = time.monotonic()
    corpus = resolve_corpus(c["dataset"])
    spec = ClipSpec.from_config(c["clip"])
    log.info("ingest: %d videos in %d classes from %s", len(corpus.rows), len(corpus.classes),
             c["dataset"]["root"] or c["dataset"]["csv"])
    progress = Progress("ingest", len(corpus.rows))
    by_id = {r["video_id"]: r for r in map_tasks(ingest_video, corpus.rows, spec, stage="ingest", progress=progress)}
    rows = [by_id[r["video_id"]] for r in corpus.rows]  # manifest order, whatever finished first
    table = pa.Table.from_pylist(rows, schema=schemas.VIDEOS)
    write_table(table, os.path.join(run_dir, "videos.parquet"))
    failed = [r for r in rows if r["status"] == schemas.FAILED]
    for r in failed:
        log.warning("ingest: %s failed: %s", r["video_id"], r["error"])
    wall = time.monotonic() - t0
    record["stages"]["ingest"] = {
        "wall_s": round(wall, 3),
        "videos_per_s": round(len(rows) / wall, 3) if wall > 0 else None,
        "videos_in": len(rows), "videos_ok": len(rows) - len(failed), "videos_failed": len(failed),
    }
    record["counts"].update(videos_in=len(rows), videos_ok=len(rows) - len(failed), videos_failed=len(failed),
                            classes=len(corpus.classes))
    return table


STAGE_FUNCTIONS = {"ingest": stage_ingest}


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Validate, then run the configured stages; returns the run record (run.json)."""
    validate(cfg)
    absolutise(cfg)
    c = to_plain(cfg)
    run_dir = c["run"]["output_dir"]
    os.makedirs(run_dir, exist_ok=True)
    logging.getLogger("pipeline").setLevel(c["run"]["log_level"].upper())
    record: dict[str, Any] = {
        "run_dir": run_dir,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "finished": None,
        "command": " ".join(sys.argv),
        "config": c,
        "versions": versions(),
        "stages": {},
        "counts": {},
    }
    init_ray(c["ray"])
    t0 = time.monotonic()
    for stage in c["run"]["stages"]:
        STAGE_FUNCTIONS[stage](c, run_dir, record)
        write_json(record, os.path.join(run_dir, "run.json"))
    record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record["wall_s"] = round(time.monotonic() - t0, 3)
    write_json(record, os.path.join(run_dir, "run.json"))
    print_summary(record)
    return record


def print_summary(record: dict[str, Any]) -> None:
    counts = record["counts"]
    print(f"\nrun folder: {record['run_dir']}")
    print(f"videos: {counts.get('videos_in', 0)} in, {counts.get('videos_ok', 0)} ok, "
          f"{counts.get('videos_failed', 0)} failed  (videos.parquet)")
    for name, s in record["stages"].items():
        print(f"  {name:<8} {s['wall_s']:8.1f} s")
    print(f"run record: {os.path.join(record['run_dir'], 'run.json')}", flush=True)


register_configs()


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run_job(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
