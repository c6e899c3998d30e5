"""Explaining new videos with a finished run (`python -m pipeline.score`, `score_videos`): a run's
own scoring videos scored this way get exactly the run's voxel maps; other settings than the
run's are refused before any work, naming them."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from pipeline import open_run, score_videos
from tests.conftest import call_main, run_cli


@pytest.fixture(scope="module")
def scored(small_run, tmp_path_factory):
    """A scoring video per class of the small run, copied to a folder and scored with it."""
    run = open_run(small_run["out"])
    heat = run.table("voxel_importance", columns=["video_id", "target_class"]).drop_duplicates()
    picked = sorted(heat.groupby("target_class").video_id.apply(lambda v: sorted(v)[:1]).sum())
    base = tmp_path_factory.mktemp("score")
    for vid in picked:
        row = run.videos.set_index("video_id").loc[vid]
        os.makedirs(base / "new" / os.path.dirname(vid), exist_ok=True)
        shutil.copy(row.path, base / "new" / (vid + ".mp4"))
    out = base / "scored"
    res = call_main(f"run_dir={small_run['out']}", "dataset=folder", f"dataset.root={base / 'new'}",
                    f"run.output_dir={out}", module="pipeline.score")
    assert res.returncode == 0, res.stderr[-3000:]
    return {"run": run, "picked": picked, "out": str(out), "base": base, "stdout": res.stdout}


def test_a_runs_own_scoring_videos_get_the_runs_voxel_maps(scored):
    run, new = scored["run"], open_run(scored["out"])
    layers = sorted(run.concepts.layer.unique())
    for vid in scored["picked"]:
        k = vid.split("/")[0]
        for layer in layers:
            for score in ("tcav", "causal"):
                mine = new.voxel_importance(vid, layer=layer, score=score, target_class=k)
                assert np.array_equal(mine, run.voxel_importance(vid, layer=layer, score=score)), (vid, layer, score)
    record = json.load(open(os.path.join(scored["out"], "run.json")))
    assert record["stages"]["score"]["videos"] == len(scored["picked"])
    assert record["stages"]["score"]["source_run"] == run.path
    assert set(record["stages"]) == {"ingest", "segment", "activate", "score", "report"}  # no rediscovery


def test_each_videos_sensitivity_to_its_predicted_classs_concepts_is_the_runs_cavs_on_its_gradient(
    scored,
):
    """concept_sensitivity/: for a video predicted as its label, the share of the run's CAVs of
    each concept of the class with a positive derivative is exactly what the run's own gradient
    of that video (clip_activations/) gives with the saved CAVs: the scored folder's gradient is
    the run's, and averaged over a class's scoring videos these shares are its TCAV scores."""
    from pipeline.scoring.tcav import directional_derivatives

    run, new = scored["run"], open_run(scored["out"])
    sens = new.concept_sensitivity
    predicted = new.predictions.set_index("video_id").predicted_class
    assert set(sens.video_id) == {
        v for v in scored["picked"] if predicted[v] in set(run.concepts.target_class)
    }
    assert (
        sens.target_class == sens.video_id.map(predicted)
    ).all()  # the predicted class's concepts
    grads = run.activations(clips=True).set_index(["video_id", "layer"])
    checked = 0
    for (vid, k, layer), rows in sens.groupby(["video_id", "target_class", "layer"]):
        cavs = run.cavs(k, layer)
        assert set(rows.concept) == set(cavs.concept)  # every concept of the pair, and "random"
        if k != vid.split("/")[0]:
            continue  # predicted as another class: the run has no gradient of that class for it
        g = np.asarray(grads.loc[(vid, layer)].gradient, dtype=np.float32)
        for r in rows.itertuples():
            d = cavs[cavs.concept == r.concept].sort_values("random_set")
            s = directional_derivatives(g[None], np.stack(d.direction))[0]
            assert r.cavs == len(d) and r.share_positive == (s > 0).mean(), (vid, layer, r.concept)
            assert r.derivative_mean == pytest.approx(s.mean(), rel=1e-9, abs=1e-12)
            checked += 1
    assert checked > 0


def test_concept_presence_says_which_concepts_are_where(scored):
    from pipeline.segmentation.supervoxels import split_supervoxel_id

    new = open_run(scored["out"])
    presence = new.table("concept_presence")
    heat = new.table("voxel_importance")
    assert len(presence) and set(presence.video_id) <= set(scored["picked"])
    volumes = new.folder.label_volumes(sorted(heat.video_id.unique()))
    vid, sid = heat.video_id[0], heat.supervoxel_ids[0][0]  # the public reader of one mask agrees
    resolution, label = split_supervoxel_id(sid)
    assert np.array_equal(new.supervoxel_mask(vid, sid), volumes[vid][resolution] == label)
    for _, row in heat.iterrows():
        mine = presence[(presence.video_id == row.video_id) & (presence.target_class == row.target_class)
                        & (presence.layer == row.layer)]
        assigned = {c: sorted(s for s, cc in zip(row.supervoxel_ids, row.concepts) if cc == c)
                    for c in set(row.concepts) - {None}}
        assert {r.concept: sorted(r.supervoxel_ids) for r in mine.itertuples()} == assigned
        for r in mine.itertuples():
            mask = np.zeros(row["shape"], dtype=bool)
            for sid in r.supervoxel_ids:
                resolution, label = split_supervoxel_id(sid)
                mask |= volumes[row.video_id][resolution] == label
            assert r.voxels == mask.sum() and 0 <= r.t0 < r.t1 <= row["shape"][0]
    predicted = new.predictions.set_index("video_id").predicted_class
    assert set(heat.target_class) >= {predicted[v] for v in scored["picked"]}  # the predicted class explains each


def test_the_scored_page_opens_in_a_real_browser(scored):
    from tests.browser import have_browser, open_page

    path = os.path.join(scored["out"], "report", "index.html")
    html = open(path).read()
    assert all(vid in html for vid in scored["picked"][:2])
    if not have_browser():
        pytest.skip("no Chromium on this machine (make test installs it)")
    check = open_page(path)
    assert check.console_errors == [] and check.broken_images == [] and check.images >= 2 * len(scored["picked"])


@pytest.mark.parametrize("override, named", [("segment.n_segments=[10,20]", "segment.n_segments"),
                                             ("model=r3d_18", "model.name"), ("activate.fill=0", "activate.fill")])
def test_other_settings_than_the_runs_are_refused_before_any_work(scored, small_run, override, named):
    out = scored["base"] / "refused"
    command = run_cli if override.startswith("model=") else call_main  # one as a real process: exit code 2
    res = command(f"run_dir={small_run['out']}", "dataset=folder", f"dataset.root={scored['base'] / 'new'}",
                    f"run.output_dir={out}", override, module="pipeline.score")
    assert res.returncode == 2
    assert named in res.stderr and "finished run's settings" in res.stderr
    assert not out.exists()


def test_the_python_api_scores_a_list_of_videos(scored, small_run):
    vid = scored["picked"][0]
    path = str(scored["base"] / "new" / (vid + ".mp4"))
    with pytest.raises(ValueError, match=r"segment\['n_segments'\].*finished run's settings"):
        score_videos(small_run["out"], [path], str(scored["base"] / "never"), segment={"n_segments": [7]})
    with pytest.raises(ValueError, match="a folder of their own"):  # never into a run of the job
        score_videos(small_run["out"], [path], small_run["out"])
    new = score_videos(scored["run"], [path], str(scored["base"] / "api"), activate={"num_actors": 1})
    run = scored["run"]
    layer = sorted(run.concepts.layer.unique())[0]
    # a list's video ids are <folder>/<name>, as the synthetic corpus's
    assert np.array_equal(new.voxel_importance(vid, layer=layer), run.voxel_importance(vid, layer=layer))


def test_a_rerun_with_more_videos_scores_them_too(scored, small_run):
    run = scored["run"]
    heat = run.table("voxel_importance", columns=["video_id"]).video_id
    extra = sorted(set(heat) - set(scored["picked"]))[0]
    os.makedirs(scored["base"] / "new" / os.path.dirname(extra), exist_ok=True)
    shutil.copy(run.videos.set_index("video_id").loc[extra].path, scored["base"] / "new" / (extra + ".mp4"))
    res = call_main(f"run_dir={small_run['out']}", "dataset=folder", f"dataset.root={scored['base'] / 'new'}",
                    f"run.output_dir={scored['out']}", module="pipeline.score")
    assert res.returncode == 0, res.stderr[-3000:]
    record = json.load(open(os.path.join(scored["out"], "run.json")))
    assert record["stages"]["score"]["videos"] == len(scored["picked"]) + 1
    layer = sorted(run.concepts.layer.unique())[-1]
    scored_map = open_run(scored["out"]).voxel_importance(extra, layer=layer, target_class=extra.split("/")[0])
    assert np.array_equal(scored_map, run.voxel_importance(extra, layer=layer))
