"""The segment stage's fan-out, hand-written against Ray Data, on the same units of work, in one
process, with workers writing Parquet on both sides.

    .venv/bin/python bench/fanout.py [--videos 1000] [--repeats 2]

The corpus: N small synthetic clips (16x56x56, as bench/scale.py), ingested once. Each side
then segments every video (the `reference` preset: 3 resolutions) into a fresh copy of that run
folder, the sides alternating, each timed `--repeats` times (best kept):

(a) tasks: the job's segment stage (`run.stages=[segment]`): one Ray task per unit of
    `segment.videos_per_part` videos, at most 2 x CPUs in flight, each writing its unit's
    supervoxels/ and label_volumes/ parts and its marker (`segment_unit`);
(b) Ray Data, as the scheduler: `from_items(units).map(segment_unit)`: the same function on the
    same units, through Ray Data's streaming executor (its backpressure, its task pool);
(c) Ray Data, the idiomatic way: `from_items(video rows).map_batches(batch_size=videos_per_part)`
    returns each batch's label volumes (the bulk of the bytes) and `write_parquet` writes them;
    the supervoxel tables are written by the batch function itself (two datasets come out of
    one map and Ray Data writes one).

Ray is started once, its workers warmed before the clock starts. Every side's outputs are
counted (rows of label_volumes/ and supervoxels/) and must agree. The last line is
`ray_data_vs_tasks=<(b) wall / (a) wall> ray_data_write_parquet_vs_tasks=<(c) / (a)>`
(above 1: the hand-written fan-out is faster).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.scale import class_folders, corpus  # noqa: E402


def config(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from pipeline.config import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=overrides)


def fresh_copy(base: str, out: str) -> None:
    """The ingested run folder, without any segment output."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(base, out, ignore=shutil.ignore_patterns("segment", "supervoxels", "label_volumes", "lease.json"))


def outputs(out: str) -> tuple[int, int]:
    import pyarrow.dataset as ds

    return tuple(ds.dataset(os.path.join(out, d), format="parquet").count_rows()  # type: ignore[return-value]
                 for d in ("label_volumes", "supervoxels"))


def tasks_side(overrides: list[str], out: str) -> float:
    from pipeline.job import run_job

    t0 = time.perf_counter()
    run_job(config(overrides + [f"run.output_dir={out}", "run.stages=[segment]"]))
    return time.perf_counter() - t0


def ray_data_side(overrides: list[str], out: str, idiomatic: bool) -> float:
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray

    from pipeline import io, schemas
    from pipeline.config import to_plain
    from pipeline.data.video import ClipSpec, DecodeLimits
    from pipeline.lease import Lease, new_run_id
    from pipeline.models.registry import model_window
    from pipeline.params import from_section
    from pipeline.run_folder import LABEL_VOLUMES, SUPERVOXELS, RunFolder, fingerprints
    from pipeline.segmentation.supervoxels import SegmentParams
    from pipeline.segmentation.video import segment_video
    from pipeline.stages.base import VideoRows, unit_batches
    from pipeline.stages.segment import segment_tables, segment_unit

    t0 = time.perf_counter()
    c = to_plain(config(overrides + [f"run.output_dir={out}"]))
    spec, limits = ClipSpec(**c["clip"]), DecodeLimits(**c["decode"])
    params = from_section(SegmentParams, c["segment"])
    window = model_window(c["model"])
    min_frames = window if c["segment"]["short_supervoxels"] == "drop" else None
    run_id = new_run_id()
    folder = RunFolder(out, run_id)
    with Lease(out, run_id) as lease:  # workers write only under a live lease, as the job's
        folder.lease = lease
        fingerprint = fingerprints(c, window, None)["segment"]
        table = folder.read_videos()
        videos = VideoRows(table.filter(pc.equal(table.column("status"), schemas.OK)))
        per_part = int(c["segment"]["videos_per_part"])
        units = unit_batches(videos.ids, per_part)
        if not idiomatic:
            items = [{"unit": f"{n:05d}", "ids": ids} for n, ids in enumerate(units)]

            def run_unit(item: dict) -> dict:
                segment_unit(folder, item["unit"], videos.rows(list(item["ids"])), spec, params, min_frames,
                             fingerprint, limits)
                return {"unit": item["unit"]}

            done = ray.data.from_items(items, override_num_blocks=len(items)).map(run_unit, num_cpus=1).take_all()
            assert len(done) == len(units)
            return time.perf_counter() - t0

        n_segments = list(params.n_segments)
        sv_dir = folder.path(SUPERVOXELS)

        def segment_batch(batch: pa.Table) -> pa.Table:
            results = [segment_video(row, spec, params, min_frames, limits) for row in batch.to_pylist()]
            (_, label_groups), (_, sv_groups) = segment_tables(results, n_segments)
            name = f"part-{results[0].video_id.replace('/', '_')}.parquet"
            io.write_row_groups(sv_groups, os.path.join(sv_dir, name))
            return pa.concat_tables(label_groups)

        blocks = [videos.table.take(pa.array([videos.position[v] for v in ids])) for ids in units]
        rows = ray.data.from_arrow(blocks)  # a block per unit, as the tasks side has
        rows.map_batches(segment_batch, batch_size=per_part, batch_format="pyarrow", num_cpus=1,
                         zero_copy_batch=True).write_parquet(folder.path(LABEL_VOLUMES))
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--work", default=None, help="a folder for the corpus and the runs (default: a temporary one)")
    a = ap.parse_args()

    import ray

    from pipeline.config import register_configs
    from pipeline.job import run_job

    work = a.work or tempfile.mkdtemp(prefix="fanout-")
    files = corpus(work, a.videos)
    links = class_folders(work, files, len(files), 10)
    overrides = ["dataset=folder", f"dataset.root={links}", "segment=reference", "clip.height=56", "clip.width=56"]
    register_configs()
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    try:
        @ray.remote(num_cpus=1)
        def warm() -> None:  # worker processes started and their imports done before the clock
            import skimage.segmentation  # noqa: F401

            import pipeline.stages.segment  # noqa: F401
            time.sleep(0.5)

        ray.get([warm.remote() for _ in range(int(ray.cluster_resources()["CPU"]))])
        base = os.path.join(work, "ingested")
        run_job(config(overrides + [f"run.output_dir={base}", "run.stages=[ingest]"]))
        sides = {"tasks": lambda out: tasks_side(overrides, out),
                 "ray_data_map": lambda out: ray_data_side(overrides, out, idiomatic=False),
                 "ray_data_write_parquet": lambda out: ray_data_side(overrides, out, idiomatic=True)}
        best = {k: float("inf") for k in sides}
        counts = {}
        for rep in range(a.repeats):
            for name, side in sides.items():
                out = os.path.join(work, f"run-{name}")
                fresh_copy(base, out)
                seconds = side(out)
                counts[name] = outputs(out)
                best[name] = min(best[name], seconds)
                print(f"{name:24s} repeat {rep + 1}: {seconds:7.2f} s  ({len(files) / seconds:.2f} videos/s)  "
                      f"label-volume rows {counts[name][0]}, supervoxel rows {counts[name][1]}", flush=True)
    finally:
        ray.shutdown()
    if len(set(counts.values())) != 1:
        sys.exit(f"the sides wrote different outputs: {counts}")
    print(f"{len(files)} videos, best of {a.repeats}: " + ", ".join(f"{k} {v:.2f} s" for k, v in best.items()))
    print(f"ray_data_vs_tasks={best['ray_data_map'] / best['tasks']:.3f} "
          f"ray_data_write_parquet_vs_tasks={best['ray_data_write_parquet'] / best['tasks']:.3f}")


if __name__ == "__main__":
    main()
