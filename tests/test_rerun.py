"""A rerun into the same run folder does the work its change needs, no more and no less
(units of one video, so the counts are videos): other videos under the same names are all
redone, a fixed file is redone alone, a video that failed for a reason that may pass is tried
again and one that may not is kept failed. Real files, the real job, the shared local Ray."""

from __future__ import annotations

import os
import shutil

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.conftest import run_job_here

pytestmark = pytest.mark.ray

ONE_PER_UNIT = ("segment.videos_per_part=1", "activate.videos_per_part=1")
SMALL = "segment=reference"  # the method's three resolutions: fewer patches to activate than the default's five


def _stages(record: dict, stage: str) -> dict:
    return record["stages"][stage]


def _videos(out) -> dict:
    t = pq.read_table(os.path.join(out, "videos.parquet"))
    return {r["video_id"]: r for r in t.to_pylist()}


def test_other_videos_under_the_same_names_are_all_redone(tmp_path):
    """The issue's case: `dataset.synthetic.seed` changed into the same folder (other files, the
    same ids and lengths)."""
    out = str(tmp_path / "run")
    args = (f"run.output_dir={out}", f"dataset.root={tmp_path}/seed${{dataset.synthetic.seed}}",
            "dataset.synthetic.videos_per_class=2", "run.stages=[ingest,segment,activate]", SMALL, *ONE_PER_UNIT)
    first, _ = run_job_here(*args, "dataset.synthetic.seed=3")
    assert _stages(first, "segment")["videos_segmented"] == 6
    record, printed = run_job_here(*args, "dataset.synthetic.seed=4")
    segment = _stages(record, "segment")
    assert segment["videos_segmented"] == 6 and segment["videos_skipped_done"] == 0
    assert _stages(record, "activate")["videos_activated"] == 6
    assert "segment: 6 unit(s) to redo: their videos changed" in printed
    predictions = pq.read_table(os.path.join(out, "predictions"))
    assert predictions.num_rows == 6  # no old row stands beside a new one
    assert {r["path"] for r in _videos(out).values()} == {os.path.join(str(tmp_path), "seed4", v + ".mp4")
                                                           for v in _videos(out)}


def test_a_fixed_file_is_redone_alone_and_a_failure_that_may_pass_is_tried_again(tmp_path):
    from pipeline.data.synthetic import SyntheticParams, ensure_corpus

    ensure_corpus(str(tmp_path / "synthetic"), SyntheticParams(videos_per_class=2, seed=5))
    corpus = tmp_path / "corpus"
    shutil.copytree(tmp_path / "synthetic", corpus, ignore=shutil.ignore_patterns("*.parquet", "*.json"))
    video = corpus / "advance" / "v0000.mp4"
    good = video.read_bytes()
    out = str(tmp_path / "run")
    args = (f"run.output_dir={out}", "dataset=folder", f"dataset.root={corpus}", "run.stages=[ingest,segment,activate]",
            SMALL, *ONE_PER_UNIT)

    video.write_bytes(good[: len(good) // 2])  # truncated: fails, and stays failed while it is
    run_job_here(*args)
    assert _videos(out)["advance/v0000"]["status"] == "failed"
    again, _ = run_job_here(*args)
    assert _stages(again, "ingest")["reused"] and _stages(again, "segment")["videos_segmented"] == 0
    assert _videos(out)["advance/v0000"]["retryable"] is False

    video.write_bytes(good)  # fixed: its rows are redone, no other
    fixed, _ = run_job_here(*args)
    assert _stages(fixed, "segment")["videos_segmented"] == 1 and _stages(fixed, "segment")["videos_skipped_done"] == 5
    assert _stages(fixed, "activate")["videos_activated"] == 1
    assert _videos(out)["advance/v0000"]["status"] == "ok" and fixed["counts"]["videos_failed"] == 0
    shutil.copy(tmp_path / "synthetic" / "jitter" / "v0001.mp4", corpus / "jitter" / "new.mp4")  # a file added
    added, _ = run_job_here(*args)
    assert _stages(added, "segment")["videos_segmented"] == 1 and _stages(added, "activate")["videos_activated"] == 1
    assert _stages(added, "segment")["videos_skipped_done"] == 6 and added["counts"]["videos_ok"] == 7

    # Units of three: a file gone between ingest and segment fails alone, retryable; put back
    # as it was (same bytes and time), the rerun tries it again and only it.
    out2 = str(tmp_path / "run2")
    args2 = (f"run.output_dir={out2}", "dataset=folder", f"dataset.root={corpus}", SMALL, "segment.videos_per_part=3")
    run_job_here(*args2, "run.stages=[ingest]")
    stat = os.stat(video)
    video.rename(tmp_path / "aside.mp4")
    first, printed = run_job_here(*args2, "run.stages=[segment]")
    row = _videos(out2)["advance/v0000"]
    assert row["status"] == "failed" and row["retryable"] is True and "FileNotFoundError" in row["error"]
    assert _stages(first, "segment")["videos_segmented"] == 6 and _stages(first, "segment")["videos_failed"] == 1
    (tmp_path / "aside.mp4").rename(video)
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    retried, printed = run_job_here(*args2, "run.stages=[segment]")
    assert _stages(retried, "segment")["videos_retried"] == 1 and _stages(retried, "segment")["videos_segmented"] == 1
    assert "segment: 1 failed video(s) to try again" in printed
    statuses = pq.read_table(os.path.join(out2, "videos.parquet")).column("status")
    assert pc.all(pc.equal(statuses, "ok")).as_py()
