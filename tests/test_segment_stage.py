"""The segment and activate stages as a user runs them (tests/conftest.py's segmented_run: the
job with the method's supervoxels on a folder corpus with a broken file, its outputs on a
file:// URI): supervoxels on disk, masks read back, vectors for every kept supervoxel and clip,
resume, failures."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from pipeline import open_run
from pipeline.io import read_parts
from pipeline.run_folder import RunFolder
from tests.conftest import call_main, run_job_here


def test_every_kept_supervoxel_reads_back_as_a_mask_inside_the_clip(segmented_run):
    out = segmented_run["out"]
    videos = pq.read_table(os.path.join(out, "videos.parquet")).to_pylist()
    assert len(videos) == 13
    assert {v["video_id"]: v["status"] for v in videos}["advance/broken"] == "failed"
    sv = read_parts(os.path.join(out, "supervoxels")).to_pylist()
    ok_ids = {v["video_id"] for v in videos if v["status"] == "ok"}
    assert {r["video_id"] for r in sv} == ok_ids  # every ok video segmented, the failed one not
    parts = sorted(os.listdir(os.path.join(out, "supervoxels")))
    assert len(parts) == 4  # 12 videos in units of at most 4 (videos_per_part), at least two per CPU: 4 of 3
    for name in ("supervoxels", "label_volumes"):  # one row group per video
        assert [pq.ParquetFile(os.path.join(out, name, p)).num_row_groups for p in parts] == [3, 3, 3, 3]
    kept = [r for r in sv if r["status"] == "kept"]
    assert len(kept) >= 12 * 10
    from pipeline.segmentation.supervoxels import split_supervoxel_id

    volumes = RunFolder(out).label_volumes(sorted(ok_ids))  # every kept supervoxel, from its label volume
    for i, r in enumerate(kept):
        resolution, label = split_supervoxel_id(r["supervoxel_id"])
        mask = volumes[r["video_id"]][resolution] == label
        if i % 25 == 0:  # and through the public reader, for a sample
            assert np.array_equal(open_run(out).supervoxel_mask(r["video_id"], r["supervoxel_id"]), mask)
        assert mask.shape == (16, 112, 112) and mask.dtype == bool
        assert mask.sum() == r["volume"] > 0
        ts, ys, xs = np.nonzero(mask)
        assert (ts.min(), ts.max() + 1, ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) == (
            r["t0"], r["t1"], r["y0"], r["y1"], r["x0"], r["x1"])
    record = json.load(open(os.path.join(out, "run.json")))
    seg = record["stages"]["segment"]
    assert seg["videos_segmented"] == 12 and seg["supervoxels"]["kept"] == len(kept)
    assert record["counts"]["supervoxels_kept"] == len(kept)
    assert "segment: 12/12 videos" in segmented_run["first"]


def test_every_kept_supervoxel_and_every_clip_has_vectors(segmented_run):
    out = segmented_run["out"]
    sv = read_parts(os.path.join(out, "supervoxels")).to_pandas()
    kept = sv[sv.status == "kept"]
    act = pd.concat([read_parts(os.path.join(out, name)).to_pandas() for name in ("activations", "clip_activations")])
    for layer in ("layer2", "layer3"):  # the demo model's recommended layers
        rows = act[act.layer == layer]
        got = set(zip(rows.video_id, rows.supervoxel_id))
        assert got == set(zip(kept.video_id, kept.supervoxel_id)) | {(v, -1) for v in kept.video_id.unique()}
        assert all(len(v) == 64 for v in rows.vector)
        clips = rows[rows.supervoxel_id == -1]
        assert clips.gradient.notna().all() and (clips.n_windows == 1).all()
    pred = read_parts(os.path.join(out, "predictions")).to_pandas()
    assert len(pred) == 12 and pred.correct.mean() >= 0.8  # the demo model on unseen synthetic clips
    stage = json.load(open(os.path.join(out, "run.json")))["stages"]["activate"]
    assert stage["videos_activated"] == 12 and stage["supervoxel_vectors"] == len(kept)
    # activate.autocast=null: bf16 where this CPU runs it natively, and run.json says which
    assert stage["bf16"] == (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def test_concepts_tables(segmented_run):
    out = segmented_run["out"]
    concepts = pq.read_table(os.path.join(out, "concepts.parquet")).to_pandas()
    members, tcav = (_sorted(out, name) for name in ("concept_members", "tcav_scores"))
    for col in ("target_class", "layer", "concept", "rank", "size", "num_videos", "tcav_mean", "tcav_std", "p_value",
                "significant", "cav_accuracy", "centroid"):
        assert col in concepts.columns
    assert len(concepts) > 0 and set(concepts.layer) == {"layer2", "layer3"}
    assert set(concepts.target_class) == {"advance", "jitter", "retreat"}
    sv = read_parts(os.path.join(out, "supervoxels")).to_pandas()
    kept = set(zip(sv.video_id[sv.status == "kept"], sv.supervoxel_id[sv.status == "kept"]))
    assert set(zip(members.video_id, members.supervoxel_id)) <= kept
    assert members.groupby("concept").size().to_dict() == concepts.set_index("concept")["size"].to_dict()
    n_sets = 20  # concepts.num_random_exp
    assert len(tcav) == n_sets * (len(concepts) + 6)  # every concept and the baseline of each (class, layer)
    record = json.load(open(os.path.join(out, "run.json")))
    assert record["counts"]["concepts_found"] == len(concepts)
    layer3 = record["stages"]["concepts"]["classes"]["advance"]["layers"]["layer3"]["notes"]
    assert any("same for every video" in n for n in layer3)  # layer3 feeds the pooled head: flagged
    layer2 = record["stages"]["concepts"]["classes"]["advance"]["layers"]["layer2"]["notes"]
    assert not any("same for every video" in n for n in layer2)

    vi = read_parts(os.path.join(out, "voxel_importance")).to_pandas()
    assert set(vi.layer) == {"layer2", "layer3"} and vi.groupby(["video_id", "layer"]).size().max() == 1
    for vid in vi.video_id.unique():
        m = open_run(out).voxel_importance(vid)
        assert m.shape == (16, 112, 112) and m.dtype == np.float32 and 0 <= m.min() and m.max() <= 1
    # Same seed, same outputs (a whole run again, compared table by table): test_resilience.py's
    # runs against their clean run.


def _sorted(out: str, dataset: str) -> pd.DataFrame:
    """A dataset written in parts, in a stable order (the parts' order is the scheduling's)."""
    df = read_parts(os.path.join(out, dataset)).to_pandas()
    return df.sort_values([c for c in ("target_class", "layer", "concept", "random_set", "video_id", "supervoxel_id")
                           if c in df.columns]).reset_index(drop=True)


def _markers(out: str, stage: str) -> list[str]:
    """A stage's marker files in the order they were written (their names: the run's id, a counter)."""
    return sorted(glob.glob(os.path.join(out, "_done", stage, "part-*.parquet")))


def test_rerun_skips_what_is_done_and_redoes_a_lost_part(segmented_run):
    out, args = segmented_run["out"], segmented_run["args"]
    before = read_parts(os.path.join(out, "supervoxels")).to_pandas()
    lost = _markers(out, "segment")[2]
    n = pq.read_metadata(lost).num_rows
    os.remove(lost)  # as if the run had crashed before this unit's marker: its parts are leftovers
    _, printed = run_job_here(*args)
    stages = json.load(open(os.path.join(out, "run.json")))["stages"]
    seg = stages["segment"]
    assert seg["videos_skipped_done"] == 12 - n and seg["videos_segmented"] == n
    assert stages["activate"]["videos_skipped_done"] == 12 and stages["activate"]["videos_activated"] == 0
    after = read_parts(os.path.join(out, "supervoxels")).to_pandas()
    key = ["video_id", "supervoxel_id"]
    assert after.sort_values(key).reset_index(drop=True).equals(before.sort_values(key).reset_index(drop=True))
    assert "reused" in printed  # ingest was not redone either


@pytest.mark.parametrize("change", ["segment.compactness=10", "segment.dedupe=stce"])
def test_changed_settings_do_not_mix_with_old_outputs(segmented_run, change):
    res = call_main(*segmented_run["args"], change)
    assert res.returncode != 0
    assert "other clip/segment settings" in res.stderr


def test_the_authors_dedupe_rule_runs_in_the_stage(segmented_run, tmp_path):
    """segment.dedupe=stce reaches every task: the stage keeps what segment_clip keeps by that rule."""
    from pipeline.data.ingest import read_ingested_clip
    from pipeline.data.video import ClipSpec
    from pipeline.segmentation.supervoxels import SegmentParams, segment_clip

    args = [a for a in segmented_run["args"] if not a.startswith("run.output_dir=")]
    out = tmp_path / "stce"
    run_job_here(*args, f"run.output_dir={out}", "segment.dedupe=stce",
                 "run.stages=[ingest,segment]")
    sv = read_parts(str(out / "supervoxels")).to_pandas()
    dup = sv[sv.status == "dropped_duplicate"]
    assert len(dup) and dup.reason.str.startswith("aligned Jaccard").all()
    video = [v for v in pq.read_table(str(out / "videos.parquet")).to_pylist() if v["status"] == "ok"][0]
    cfg = json.load(open(out / "run.json"))["config"]
    clip = read_ingested_clip(video, ClipSpec(**cfg["clip"]))
    seg = segment_clip(clip.frames, SegmentParams(n_segments=[15, 50, 80], dedupe="stce"))
    mine = sv[sv.video_id == video["video_id"]]
    survived = sorted(mine.supervoxel_id[mine.status.isin(["kept", "dropped_short"])])  # short: after dedupe
    assert survived == seg.table["supervoxel_id"][seg.table["status"] == "kept"].tolist()


def test_a_video_that_fails_in_the_actor_becomes_a_failed_row(segmented_run):
    out, args = segmented_run["out"], segmented_run["args"]
    first = _markers(out, "activate")[0]
    victim = pq.read_table(first).column("video_id")[0].as_py()
    n = pq.read_metadata(first).num_rows
    folder = [a for a in args if a.startswith("dataset.root=")][0].split("=", 1)[1]
    path = os.path.join(folder, victim + ".mp4")
    stat = os.stat(path)
    with open(path, "r+b") as f:  # corrupt it after segmentation, its listing (size, time) kept:
        f.seek(0)                 # the one change dataset.identity=stat cannot see
        f.write(b"\x00" * 4096)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.remove(first)
    # up to activate: the later stages read a video that failed here as one that failed at ingest
    # (no predictions, no activations; the broken file of this corpus goes through all of them)
    run_job_here(*args, "run.stages=[ingest,segment,activate]")
    stage = json.load(open(os.path.join(out, "run.json")))["stages"]["activate"]
    assert stage["videos_failed"] == 1 and stage["videos_activated"] == n - 1 and stage["videos_skipped_done"] == 12 - n
    row = {v["video_id"]: v for v in pq.read_table(os.path.join(out, "videos.parquet")).to_pylist()}[victim]
    assert row["status"] == "failed" and row["failed_stage"] == "activate"
    assert "activation failed" in row["error"]
