"""Outputs on a filesystem URI instead of a local path (s3://, gs://, hdfs://, ... through
pyarrow's filesystems): the whole job on a `file://` URI (its Ray workers write their own parts
there, so the filesystem must be one that every process sees), then the public readers on
pyarrow's in-memory `mock://` filesystem (an object store's semantics: no directories, a
rename is a copy), in this process."""

from __future__ import annotations

import numpy as np

from tests.conftest import compose


def test_the_job_writes_and_reads_a_run_on_a_filesystem_uri(tmp_path, local_ray, monkeypatch):
    from pipeline import open_run
    from pipeline.io import exists, read_json, read_parts
    from pipeline.job import run_job

    monkeypatch.chdir(tmp_path)
    run = f"file://{tmp_path}/bucket/runs/small"
    cfg = compose(f"run.output_dir={run}", f"dataset.root={tmp_path / 'corpus'}", "dataset.synthetic.videos_per_class=3",
                  "segment=reference", "concepts.num_random_exp=3", "ray.num_cpus=2")
    record = run_job(cfg)
    assert record["run_dir"] == run  # kept as a URI, not made into a local path
    stored = read_json(f"{run}/run.json")
    assert stored["counts"] == record["counts"] and stored["counts"]["videos_ok"] == 9
    for name in ("videos.parquet", "concepts.parquet", "tcav_scores", "concept_members", "evaluation"):
        assert exists(f"{run}/{name}") and (tmp_path / "bucket" / "runs" / "small" / name).exists()
    # the readers on an object store: the finished run copied into pyarrow's mock:// filesystem
    import pyarrow.fs as pafs

    from pipeline.io import resolve

    local = run
    run = "mock:///bucket/runs/copy"
    fs, path = resolve(run)
    pafs.copy_files(str(tmp_path / "bucket" / "runs" / "small"), path, destination_filesystem=fs)
    sv = read_parts(f"{run}/supervoxels").to_pandas()
    kept = sv[sv.status == "kept"].iloc[0]
    mask = open_run(run).supervoxel_mask(kept.video_id, int(kept.supervoxel_id))
    assert mask.shape == (16, 112, 112) and mask.sum() == kept.volume
    vi = read_parts(f"{run}/voxel_importance").to_pandas()
    heat = open_run(run).voxel_importance(vi.video_id[0])
    assert heat.shape == (16, 112, 112) and heat.dtype == np.float32
    # a rerun finds the finished stages on the same URI and skips them
    run = local
    again = run_job(cfg)
    assert again["stages"]["segment"]["videos_skipped_done"] == 9
    assert again["stages"]["activate"]["videos_skipped_done"] == 9
