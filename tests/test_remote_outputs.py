"""Outputs on a filesystem URI instead of a local path (s3://, gs://, hdfs://, ... through
pyarrow's filesystems): a whole job (every stage) on a `file://` URI (tests/conftest.py's
segmented_run: its Ray workers write their own parts there, so the filesystem must be one that
every process sees), then the public readers on pyarrow's in-memory `mock://` filesystem (an
object store's semantics: no directories, a rename is a copy), in this process. (A rerun on
the URI skips the finished units: tests/test_segment_stage.py's rerun tests run on it.)"""

from __future__ import annotations

import os
import subprocess

import numpy as np


def test_the_job_writes_and_reads_a_run_on_a_filesystem_uri(segmented_run):
    from pipeline import open_run
    from pipeline.io import exists, read_json, read_parts, resolve

    run, record = segmented_run["uri"], segmented_run["record"]
    assert record["run_dir"] == run  # kept as a URI, not made into a local path
    stored = read_json(f"{run}/run.json")
    assert stored["counts"]["videos_in"] == record["counts"]["videos_in"] == 13
    assert record["counts"]["videos_ok"] == 12 and set(stored["stages"]) == set(record["stages"])
    from pipeline import schemas
    from tests.conftest import ROOT

    assert stored["format_version"] == schemas.FORMAT_VERSION and stored["versions"]["ace3d"]
    if os.path.isdir(os.path.join(ROOT, ".git")):  # run from this project's checkout: its commit
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True)
        assert stored["git_commit"] == head.stdout.strip()
    for name in ("videos.parquet", "concepts.parquet", "tcav_scores", "concept_members", "evaluation"):
        assert exists(f"{run}/{name}") and os.path.exists(os.path.join(segmented_run["out"], name))
    # the readers on an object store: the finished run copied into pyarrow's mock:// filesystem
    import pyarrow.fs as pafs

    copy = "mock:///bucket/runs/copy"
    fs, path = resolve(copy)
    pafs.copy_files(segmented_run["out"], path, destination_filesystem=fs)
    sv = read_parts(f"{copy}/supervoxels").to_pandas()
    kept = sv[sv.status == "kept"].iloc[0]
    mask = open_run(copy).supervoxel_mask(kept.video_id, int(kept.supervoxel_id))
    assert mask.shape == (16, 112, 112) and mask.sum() == kept.volume
    vi = read_parts(f"{copy}/voxel_importance").to_pandas()
    heat = open_run(copy).voxel_importance(vi.video_id[0])
    assert heat.shape == (16, 112, 112) and heat.dtype == np.float32
