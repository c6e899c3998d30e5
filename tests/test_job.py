"""The main job as a user runs it: `python -m pipeline ...` on real files, in this process (the
same main, its output captured) but for one real process on the error path. (Real processes
that run the job to its end: tests/test_resilience.py and the Jobs API's entrypoint in
tests/test_cluster_job.py.)"""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest

from tests.conftest import call_main, make_video, run_cli, run_job_here


@pytest.fixture(scope="module")
def broken_folder(tmp_path_factory) -> str:
    """A class-folder corpus with good videos and every kind of broken file."""
    root = tmp_path_factory.mktemp("corpus")
    for cls in ("walk", "run"):
        (root / cls).mkdir()
        for i in range(2):
            make_video(str(root / cls / f"good{i}.mp4"), frames=20, size=(40, 56), seed=i)
    (root / "walk" / "empty.mp4").write_bytes(b"")
    (root / "walk" / "notes.txt").write_text("not a video")
    (root / "run" / "fake.mp4").write_text("definitely not an mp4 " * 20)
    make_video(str(root / "run" / "short.mp4"), frames=3, size=(40, 56))
    data = (root / "walk" / "good0.mp4").read_bytes()
    (root / "walk" / "truncated.mp4").write_bytes(data[: len(data) // 3])
    return str(root)


def test_folder_corpus_with_broken_files_keeps_one_row_per_file(broken_folder, tmp_path, local_ray):
    out = tmp_path / "run"
    _, printed = run_job_here(f"run.output_dir={out}", "dataset=folder", f"dataset.root={broken_folder}",
                              "run.stages=[ingest]", "clip.num_frames=8", "clip.frame_stride=2", "clip.height=32",
                              "clip.width=32")
    videos = pq.read_table(out / "videos.parquet").to_pylist()
    by_id = {v["video_id"]: v for v in videos}
    assert len(videos) == 9 and len(by_id) == 9
    ok = {k for k, v in by_id.items() if v["status"] == "ok"}
    assert ok == {"walk/good0", "walk/good1", "run/good0", "run/good1"}
    reasons = {k: v["error"] for k, v in by_id.items() if v["status"] == "failed"}
    assert "empty file" in reasons["walk/empty"]
    assert "cannot open as a video" in reasons["walk/notes"]
    assert "cannot open as a video" in reasons["run/fake"]
    assert "shorter than needed" in reasons["run/short"]
    assert reasons["walk/truncated"]
    good = by_id["walk/good1"]
    assert good["clip_frame_indices"] == [2, 4, 6, 8, 10, 12, 14, 16]  # centred, stride 2
    assert (good["num_frames"], good["height"], good["width"]) == (20, 40, 56)
    assert (good["clip_height"], good["clip_width"]) == (32, 32)
    assert good["label"] == "walk" and good["path"].endswith("walk/good1.mp4")
    record = json.loads((out / "run.json").read_text())
    assert record["counts"]["videos_in"] == 9 and record["counts"]["videos_failed"] == 5
    assert record["stages"]["ingest"]["wall_s"] > 0
    assert record["config"]["dataset"]["root"] == broken_folder
    assert record["versions"]["ray"]
    assert "ingest: 9/9 videos" in printed  # progress is shown


def test_a_video_that_hangs_alone_fails_at_the_unit_time_limit_and_its_unit_mates_do_not(tmp_path, local_ray):
    """A read that never returns (a named pipe nobody writes, as a stuck network mount): its
    unit is stopped at decode.unit_timeout_s, its videos tried one at a time, and only the one
    that hangs again becomes a failed row naming the limit."""
    root = tmp_path / "corpus"
    (root / "walk").mkdir(parents=True)
    for i in range(8):
        make_video(str(root / "walk" / f"good{i}.mp4"), frames=12, size=(32, 32), seed=i)
    os.mkfifo(root / "walk" / "stuck.mp4")
    out = tmp_path / "run"
    record, printed = run_job_here(f"run.output_dir={out}", "dataset=folder", f"dataset.root={root}",
                                   "run.stages=[ingest]", "clip.num_frames=8", "clip.height=32", "clip.width=32",
                                   "decode.unit_timeout_s=12")  # room for a cold worker on a busy machine
    by_id = {v["video_id"]: v for v in pq.read_table(out / "videos.parquet").to_pylist()}
    assert len(by_id) == 9 and sum(v["status"] == "ok" for v in by_id.values()) == 8
    assert by_id["walk/stuck"]["status"] == "failed"
    assert "timed out" in by_id["walk/stuck"]["error"] and "decode.unit_timeout_s" in by_id["walk/stuck"]["error"]


def test_a_folder_of_another_output_format_is_refused_before_any_work(tmp_path):
    """run.json names the format a folder was written in: the job and the score command stop on
    another, saying what to do; the folder keeps what it had."""
    from pipeline import schemas

    out = tmp_path / "old"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"format_version": schemas.FORMAT_VERSION - 1,
                                              "versions": {"pipeline": "0.0.9"}, "config": {}}))
    (out / "concepts.parquet").write_bytes(b"")
    res = call_main(f"run.output_dir={out}", f"dataset.root={tmp_path / 'never'}")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"format {schemas.FORMAT_VERSION - 1} (written by 0.0.9)" in res.stderr
    assert "write to a new run.output_dir" in res.stderr
    assert sorted(os.listdir(out)) == ["concepts.parquet", "run.json"]
    assert not (tmp_path / "never").exists()
    scored = call_main(f"run_dir={out}", "dataset=folder", f"dataset.root={tmp_path}",
                       f"run.output_dir={tmp_path / 'scored'}", module="pipeline.score")
    assert scored.returncode == 2 and f"format {schemas.FORMAT_VERSION - 1}" in scored.stderr


def test_csv_corpus(tmp_path, local_ray):
    root = tmp_path / "k400"
    make_video(str(root / "train" / "abseiling" / "abc_000010_000020.mp4"), frames=12, size=(32, 32))
    csv = tmp_path / "train.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\n"
                   "abseiling,abc,10,20,train\n"
                   "air drumming,xyz,0,10,train\n")
    out = tmp_path / "run"
    run_job_here(f"run.output_dir={out}", "dataset=csv", f"dataset.root={root}", f"dataset.csv={csv}",
                 "run.stages=[ingest]", "clip.num_frames=4", "clip.height=16", "clip.width=16")
    rows = {r["video_id"]: r for r in pq.read_table(out / "videos.parquet").to_pylist()}
    assert rows["abc_000010_000020"]["status"] == "ok" and rows["abc_000010_000020"]["split"] == "train"
    assert rows["xyz_000000_000010"]["status"] == "failed"
    assert "no such file" in rows["xyz_000000_000010"]["error"]
    assert rows["xyz_000000_000010"]["label"] == "air drumming"


@pytest.mark.parametrize("override, expected", [
    ("run.ouput_dir=/tmp/x", "ouput_dir"),
    ("clip.num_frames=many", "clip.num_frames"),
    ("clip.num_frames=0", "clip.num_frames"),
    ("model=nope", "model"),
    ("model.name=x3d_mm", "model.name"),
    ("dataset=folder", "dataset.root"),
    ("run.stages=[ingest,explain]", "run.stages[1]"),
    ("model.layers=[layer9]", "model.layers"),
    ("segment.iou_threshold=1.5", "segment.iou_threshold"),
    ("segment.dedupe=iou", "segment.dedupe"),
    ("model.layout=nhwc", "model.layout"),
    ("clip.num_frames=8", "model's window of 16 frames"),
])
def test_bad_config_fails_before_any_work_naming_the_key(tmp_path, override, expected):
    out = tmp_path / "never"
    res = call_main(f"run.output_dir={out}", override)
    assert res.returncode != 0
    assert expected in res.stderr + res.stdout
    assert not (out / "videos.parquet").exists()
    assert "ingest:" not in res.stdout + res.stderr


def test_the_clip_takes_the_models_window_unless_it_is_set():
    """swin3d_t's window is 32 frames: the clip left at its default (16) follows it; a clip set
    shorter than the window is refused, naming the key."""
    from pipeline.config import ConfigError, validate
    from tests.conftest import compose

    cfg = compose("model=swin3d_t", "dataset.root=/tmp/never")
    assert validate(cfg) == 32 and cfg.clip.num_frames == 32
    cfg = compose("model=swin3d_t", "dataset.root=/tmp/never", "clip.num_frames=24")
    with pytest.raises(ConfigError, match=r"'clip.num_frames' = 24: shorter than the model"):
        validate(cfg)
    cfg = compose("dataset.root=/tmp/never", "clip.num_frames=40")  # past the demo's 16: kept
    assert validate(cfg) == 16 and cfg.clip.num_frames == 40


@pytest.mark.parametrize("stage, needs", [("evaluate", "run the concepts stage first"),
                                         ("concepts", "run the activate stage first")])
def test_a_stage_run_before_its_inputs_exist_says_what_is_missing(tmp_path, stage, needs):
    """Checked before Ray starts (the fast tier starts none)."""
    res = call_main(f"run.output_dir={tmp_path / 'run'}", f"run.stages=[{stage}]")
    assert res.returncode == 2
    assert needs in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.startswith("error: ")


def test_the_command_itself_stops_on_a_bad_value_with_exit_code_2():
    """The real process for the error path: `error: ...` on stderr, exit code 2, no traceback."""
    res = run_cli("run.output_dir=/nonexistent/never", "clip.num_frames=0")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "error: config key 'clip.num_frames' = 0: must be >= 1" in res.stderr


def test_a_second_driver_is_refused_and_writes_nothing_into_the_live_runs_folder(tmp_path):
    from pipeline.lease import Lease

    out = tmp_path / "live"
    with Lease(str(out), "the-live-run"):
        (out / "run.json").write_text("{}")
        before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
        res = call_main(f"run.output_dir={out}", "dataset.synthetic.videos_per_class=2")
        assert res.returncode == 2 and "in use by run 'the-live-run'" in res.stderr
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # no .hydra/, nothing touched
