"""The main job, `python -m pipeline`: the method's steps as stages, top to bottom.

    ingest    resolve the corpus, read each container's metadata (tasks) -> videos.parquet
    segment   3D SLIC at several resolutions, dedupe (CPU tasks)        -> supervoxels/, label_volumes/
    activate  patches built on the device, model layers (actor pool)    -> activations/, clip_activations/,
                                                                           predictions/
    concepts  k-means, acceptance rules, CAVs, TCAV, significance (a task per class and layer)
              -> concepts.parquet, concept_members/, tcav_scores/, voxel_importance/,
                 metrics/concepts.parquet
    atlas     FAISS k-means over every supervoxel vector, per layer    -> atlas/
    evaluate  causal importance, deletion/insertion curves (actor pool) -> evaluation/,
                                                                           concept_importance.parquet,
                                                                           metrics/evaluate.parquet
    report    report/index.html (a task per class)

`run_job` validates the config, takes the run folder's lease, runs the configured stages
(`pipeline.stages`) and writes run.json after each: the resolved config, versions, per-stage
wall time, throughput and counts.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from typing import Any, Callable, Optional, Sequence

import hydra
from omegaconf import DictConfig, OmegaConf

from pipeline import __version__, console, io, schemas
from pipeline.config import CONF_DIR, STAGES, ConfigError, register_configs, to_plain, validate
from pipeline.lease import Lease, LeaseError, new_run_id
from pipeline.run_folder import RUN_JSON, RunFolder, RunFolderError, fingerprints
from pipeline.stages import check_inputs, stage
from pipeline.stages.base import Job


VERSIONED_PACKAGES = ("ray", "torch", "torchvision", "pytorchvideo", "scikit-image", "faiss-cpu",
                      "pyarrow", "numpy", "av", "hydra-core", "scikit-learn", "scipy")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "ace3d": __version__}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> Optional[str]:
    """The commit of the code when it runs from this project's own git checkout (None for an
    installed package, even one inside another repository)."""
    package = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", package, "rev-parse", "--show-toplevel", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    top = os.path.realpath(os.path.dirname(package))
    ours = len(lines) == 2 and os.path.realpath(lines[0]) == top
    return lines[1] if out.returncode == 0 and ours else None


def absolutise(cfg: DictConfig) -> None:
    """Relative paths in the config are taken from the current directory, once, in the driver:
    tasks and actors may run anywhere."""
    for key in ("run.output_dir", "dataset.root", "dataset.csv", "model.path", "concepts.user"):
        value = OmegaConf.select(cfg, key)
        if value and not io.is_uri(str(value)):  # a URI (s3://...) is absolute already
            OmegaConf.update(cfg, key, os.path.abspath(os.path.expanduser(str(value))))


def run_job(cfg: DictConfig, module: Any = None, then: Sequence[Callable[[Job], None]] = (),
            cav_trainer: Any = None) -> dict[str, Any]:
    """Validate, then run the configured stages; returns the run record (run.json). `module`:
    the nn.Module to explain when `model.name` is `module` (the Python API); `then`: steps
    after the stages, under the same lease (`pipeline.score`'s); `cav_trainer`: the CAV trainer
    when `concepts.cav_model` is `user:<its name>` (the Python API)."""
    from pipeline.orchestration.actors import check_actor_resources
    from pipeline.orchestration.runtime import check_label_selector, cluster_nodes, init_ray, label_selector, share

    window = validate(cfg, module)
    check_trainer(cfg.concepts.cav_model, cav_trainer)
    driver_memory_pool()
    absolutise(cfg)
    check_user_concepts(cfg)
    c, settings = to_plain(cfg), OmegaConf.to_object(cfg)
    run_id = new_run_id()
    folder = RunFolder(settings.run.output_dir, run_id)
    logging.getLogger("pipeline").setLevel(settings.run.log_level.upper())
    record: dict[str, Any] = {
        "run_dir": folder.root,
        "run_id": run_id,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "finished": None,
        "command": " ".join(sys.argv),
        "config": c,
        "format_version": schemas.FORMAT_VERSION,
        "versions": versions(),
        "git_commit": git_commit(),
        "stages": {},
        "counts": {},
    }
    with Lease(folder.root, run_id) as lease:
        folder.lease = lease
        folder.check_format()
        keep_earlier_stages(record, folder, settings.run.stages)
        check_inputs(folder, settings.run.stages)
        init_ray(c["ray"])
        check_label_selector(label_selector(settings.ray.cpu_label_selector), settings.ray.autoscaler_config)
        check_actor_resources(settings)
        digest = model_digest(module) if module is not None else None
        job = Job(settings, c, folder, record, window, fingerprints(c, window, digest),
                  module=share(module) if module is not None else None, cav_trainer=cav_trainer)
        t0 = time.monotonic()
        for step in [stage(name) for name in settings.run.stages] + list(then):
            step(job)
            record["nodes"] = cluster_nodes()
            folder.write_json(RUN_JSON, record)
        record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        record["wall_s"] = round(time.monotonic() - t0, 3)
        folder.write_json(RUN_JSON, record)
    console.print_summary(record)
    return record


def driver_memory_pool() -> None:
    """The driver's Arrow buffers from the system allocator: it reads only small tables
    (markers, videos.parquet, indexes), and Arrow's default pool (mimalloc) kept about 15 KB of
    resident memory per video of the corpus after those reads had been freed (bench/scale.py's
    driver_rss_kb_per_video). Workers and actors keep the default."""
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())


def user_model(trainer: object) -> str:
    """`concepts.cav_model` of a user's trainer: `user:<name>@<digest>`."""
    from pipeline.concepts.params import USER
    from pipeline.orchestration.runtime import pickled_digest
    from pipeline.scoring.trainers import checked

    return f"{USER}{checked(trainer).name}@{pickled_digest(trainer)}"


def check_user_concepts(cfg: DictConfig) -> None:
    """`concepts.user`'s table reads and has the columns it needs, before any work (its videos
    and supervoxels are checked against the run's in the concepts stage)."""
    from pipeline.concepts.user import UserConceptError, read

    if cfg.concepts.user and "concepts" in cfg.run.stages:
        try:
            read(str(cfg.concepts.user))
        except UserConceptError as e:
            raise ConfigError("concepts.user", str(e)) from None


def check_trainer(cav_model: str, trainer: Any) -> None:
    """A `user:<name>@<digest>` CAV model comes with that trainer (from Python), and a trainer
    only with its own `concepts.cav_model`."""
    from pipeline.concepts.params import USER

    if trainer is not None and user_model(trainer) == cav_model:
        return
    if cav_model.startswith(USER) or trainer is not None:
        raise ConfigError("concepts.cav_model", "a trainer of one's own is handed over from Python "
                          "with its model: pipeline.explain(..., cav_trainer=<an object with name "
                          "and fit>)", cav_model)


def model_digest(module: Any) -> str:
    """A digest of a module's class and weights: what an nn.Module computes, for the fingerprint."""
    import hashlib

    h = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def keep_earlier_stages(record: dict[str, Any], folder: RunFolder, stages: list[str]) -> None:
    """A run of some stages keeps what run.json said about the stages before the first one it
    runs (their outputs are still in the folder, unchanged), marked with the run that made
    them; what later stages said is dropped, as it may no longer hold."""
    if not folder.exists(RUN_JSON):
        return
    try:
        old = io.read_json(folder.path(RUN_JSON))
    except (ValueError, OSError):
        return
    first = min(STAGES.index(s) for s in stages)
    for name, entry in (old.get("stages") or {}).items():
        if name in STAGES and STAGES.index(name) < first and isinstance(entry, dict):
            record["stages"][name] = {**entry, "from_run_started": entry.get("from_run_started", old.get("started"))}
    record["counts"] = {**(old.get("counts") or {}), **record["counts"]}
    if "concept_table" in old and first > STAGES.index("concepts"):
        record["concept_table"] = old["concept_table"]


register_configs()


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run_job(cfg)
    except (ConfigError, RunFolderError, LeaseError, FileNotFoundError) as e:  # FileNotFoundError: an input missing
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
