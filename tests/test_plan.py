"""`ace3d plan`: what a run will cost, from a few sampled videos, against the finished run."""

from __future__ import annotations

import json
import os

from pipeline.commands import cli
from pipeline.planning import plan_run
from tests.conftest import make_video


def folder_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(p, f)) for p, _, files in os.walk(path) for f in files)


def test_the_plan_of_the_default_job_is_within_a_quarter_of_the_finished_run(small_run):
    """The plan of small_run's config, from 6 of its 36 videos, against what the run did and
    wrote: supervoxels, model windows and the storage of the tables it estimates."""
    record, out = small_run["activated"], small_run["out"]  # the run that segmented and activated
    plan = plan_run(record["config"], sample=6)
    segment, activate = record["stages"]["segment"], record["stages"]["activate"]
    assert plan["corpus"]["ok"] == segment["videos_segmented"] == 36
    assert plan["corpus"]["classes_the_model_knows"] == ["advance", "jitter", "retreat"]
    assert plan["corpus"]["the_run_starts"] is True
    assert plan["sample"]["videos"] == 6 and not plan["sample"]["failed"]
    sampled = {m["video_id"].split("/")[0] for m in plan["sample"]["measured"]}
    assert sampled == {"advance", "jitter", "retreat"}  # each class in turn
    totals, storage = plan["totals"], plan["totals"]["storage_bytes"]
    ran = {"supervoxels": segment["kept_per_video"] * segment["videos_segmented"],
           "windows": activate["windows"], "label_volume": folder_size(f"{out}/label_volumes"),
           "supervoxel_row": folder_size(f"{out}/supervoxels"),
           "activation": folder_size(f"{out}/activations") + folder_size(f"{out}/clip_activations")}
    planned = {"supervoxels": totals["supervoxels"], "windows": totals["windows"], **storage}
    for key, value in ran.items():
        assert abs(planned[key] - value) <= 0.25 * value, (key, planned[key], value)
    assert plan["model"]["layers"] == {"layer2": 64, "layer3": 64}
    assert 0.3 < plan["model"]["gflops_per_window"] < 0.45  # the demo network at 16x112x112
    assert set(plan["assumptions"]) >= {"activate_gpu_hours", "segment_core_hours"}


def test_the_command_prints_the_plan_writes_plan_json_and_names_classes_the_model_lacks(capsys,
                                                                                          tmp_path):
    root = tmp_path / "corpus"
    for label in ("advance", "surfing"):
        for i in range(2):
            make_video(str(root / label / f"v{i}.mp4"), frames=20, size=(64, 64), seed=i)
    (root / "surfing" / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "out"
    code = cli.main(["plan", "dataset=folder", f"dataset.root={root}", f"run.output_dir={out}",
                     "segment=reference", "sample=3"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    plan = json.loads((out / "plan.json").read_text())
    assert plan["corpus"]["classes_the_model_knows"] == ["advance"]
    assert plan["corpus"]["classes_the_model_does_not_know"] == ["surfing"]
    assert plan["corpus"]["classes"] == {"advance": 2, "surfing": 3}  # the manifest lists files
    assert plan["sample"]["videos"] == 3  # each class in turn: the broken file is the second
    (failed,) = plan["sample"]["failed"]
    assert failed["video_id"] == "surfing/broken" and failed["error"]
    assert plan["per_video"]["supervoxels"] > 0  # the two that decode
    assert plan["corpus"]["the_run_starts"] is False  # as the job's own check would say
    assert "classes the model knows  1 of 2; not: surfing: the run would stop before any work" \
        in printed.out
    assert "3 videos decoded and segmented here, 1 failed" in printed.out
    assert f"plan: {out / 'plan.json'}" in printed.out
    assert not (out / "videos.parquet").exists()  # nothing of the run itself
    code = cli.main(["plan", f"dataset.root={root}", "sample=0"])
    assert code == 2 and capsys.readouterr().err == "error: config key 'sample' = 0: must be >= 1\n"
