"""The Python API as a notebook uses it: the README's example run as it is written (a named
model, then an nn.Module), the runs read back, and bad arguments failing before any work with
errors that name the argument."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import explain, open_run
from pipeline.io import read_parts


def test_the_readme_example_runs_and_its_run_reads_back(tiny_run):
    ns, cwd = tiny_run
    run = ns["run"]
    assert run.path == str(cwd / "outputs" / "tiny")
    assert len(run.videos) == 12 and (run.videos.status == "ok").all()
    assert len(run.concepts) > 0 and run.concepts.causal_importance.notna().all()
    assert ns["heat"].shape == (16, 112, 112) and ns["heat"].dtype == np.float32
    assert np.array_equal(ns["heat"], run.folder.voxel_importance(ns["scored"], score="causal"))
    assert os.path.isfile(run.report_path) and run.report_path.endswith(os.path.join("report", "index.html"))
    sv = run.supervoxels
    kept = sv[sv.status == "kept"].iloc[0]
    assert run.supervoxel_mask(kept.video_id, int(kept.supervoxel_id)).sum() == kept.volume
    again = ns["again"]
    assert again.record == run.record and repr(again).startswith(f"Run({run.path!r}: 12 videos")
    pd.testing.assert_frame_equal(again.evaluation, read_parts(os.path.join(run.path, "evaluation")).to_pandas())
    layer = run.concepts.layer[0]
    one = run.activations(layer, target_class="advance")  # one partition read
    assert set(one.layer) == {layer} and set(run.videos.set_index("video_id").label[one.video_id]) == {"advance"}
    clips = run.activations(layer, clips=True)
    assert (clips.supervoxel_id == -1).all() and len(clips) == len(run.predictions)


def test_a_concepts_clips_come_out_as_arrays_as_files_and_inline(tiny_run, tmp_path):
    import av
    from PIL import Image

    from pipeline.report.images import side_by_side

    run = tiny_run[0]["run"]
    concept = run.concepts.sort_values(["rank", "concept"]).concept.iloc[0]
    clips = run.concept_clips(concept, k=2)
    members = run.concept_members[run.concept_members.concept == concept].sort_values("distance")
    clip = run.record["config"]["clip"]
    # the report's exemplars: nearest the centroid, one per video while there are videos to spare
    firsts = members.drop_duplicates("video_id")
    rest = members[~members.index.isin(firsts.index)]
    expected = [*firsts.supervoxel_id[:2], *rest.supervoxel_id]
    assert [c.supervoxel_id for c in clips] == expected[:2]
    sv = run.supervoxels.set_index(["video_id", "supervoxel_id"]).volume
    for c in clips:
        assert c.frames.shape == (clip["num_frames"], clip["height"], clip["width"], 3)
        assert np.array_equal(c.mask, run.supervoxel_mask(c.video_id, c.supervoxel_id))
        assert c.mask.sum() == sv[(c.video_id, c.supervoxel_id)]
    drawn = side_by_side([c.outlined() for c in clips])
    with av.open(run.export_concept(concept, str(tmp_path / "c.mp4"), k=2)) as f:
        decoded = np.stack([frame.to_ndarray(format="rgb24") for frame in f.decode(video=0)])
    width = 2 * clip["width"] + 4  # two clips, 4 px apart
    assert decoded.shape == drawn.shape == (clip["num_frames"], clip["height"], width, 3)
    assert np.abs(decoded.astype(int) - drawn).max() <= 2  # lossless but for YCbCr's rounding
    gif = run.export_concept(concept, str(tmp_path / "c.gif"), k=2)
    assert Image.open(gif).n_frames == clip["num_frames"]
    with pytest.raises(ValueError, match="mp4, .gif or .webp"):
        run.export_concept(concept, str(tmp_path / "c.avi"))
    with pytest.raises(KeyError, match="no concept 'advance/nowhere'"):
        run.concept_clips("advance/nowhere")
    view = run.show("advance")._repr_html_()
    assert view.count("data:image/webp;base64,") >= 1 and ("Ranked by" in view or "Neither" in view)
    assert all(f"<td>{k}</td>" in run._repr_html_() for k in run.concepts.target_class.unique())


def test_a_cav_trainer_of_ones_own_fits_the_cavs(tiny_run, tmp_path):
    """A trainer handed to explain(): here the built-in one with its directions turned around,
    so every TCAV score becomes 1 minus the built-in's (the concepts, found before the CAVs, are
    the same). Only the concepts stage runs again, on a copy of the README's run."""
    import shutil

    from pipeline.scoring.trainers import BatchedSGD
    from tests.conftest import call_main

    class Flipped:  # defined here: Ray's tasks get it by value
        name = "flipped"

        def fit(self, positives, negatives, seeds):
            directions, accuracies = BatchedSGD(0.01).fit(positives, negatives, seeds)
            return -directions, accuracies

    ns, cwd = tiny_run
    run, out = ns["run"], tmp_path / "flipped"
    shutil.copytree(run.path, out)
    mine = explain(videos=str(cwd / "data" / "tiny"), model="demo", output_dir=str(out),
                   segment="reference", concepts={"num_random_exp": 5}, stages=["concepts"],
                   cav_trainer=Flipped())
    model = mine.record["config"]["concepts"]["cav_model"]  # its name and a digest of it
    assert model.startswith("user:flipped@") and len(model) == len("user:flipped@") + 12
    key = ["target_class", "layer", "concept", "random_set"]
    theirs, ours = (r.cavs().sort_values(key).reset_index(drop=True) for r in (run, mine))
    assert set(ours.trainer) == {model} and len(ours) == len(theirs) > 0
    # a user's directions are normalised again as they are stored: equal but for the last bits
    np.testing.assert_allclose(np.stack(ours.direction), -np.stack(theirs.direction), atol=1e-6)
    np.testing.assert_allclose(ours.tcav_score, 1 - theirs.tcav_score, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(ours.cav_accuracy, theirs.cav_accuracy)
    with pytest.raises(TypeError, match="needs a `name`"):
        explain(output_dir=str(tmp_path / "never"), cav_trainer=object())
    res = call_main("concepts.cav_model=user:flipped", f"run.output_dir={tmp_path / 'never'}",
                    module="pipeline")  # on the command line no trainer can come with it
    assert res.returncode == 2 and "concepts.cav_model" in res.stderr and "cav_trainer=" in res.stderr


def test_an_nn_module_gives_the_named_models_explanation(tiny_run):
    """The demo network handed over as a module, explained at layer2: the same vectors as the
    named model's, so the same concepts and scores."""
    ns, _ = tiny_run
    run, mine = ns["run"], ns["mine"]
    assert mine.record["config"]["model"]["name"] == "module"
    assert list(mine.record["stages"]) == ["ingest", "segment", "activate", "concepts"]
    later = ["causal_importance", "causal_importance_masking", "global_concept",  # evaluate's and the atlas's
             "global_concept_share"]
    named = run.concepts[run.concepts.layer == "layer2"].drop(columns=later).reset_index(drop=True)
    pd.testing.assert_frame_equal(mine.concepts.drop(columns=later), named)
    assert mine.report_path is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(clip={"num_frames": 0}), "clip['num_frames'] = 0: must be >= 1"),
    (dict(concepts={"k": 25, "rulez": "ace"}), "concepts['rulez']: unknown key; close matches: ['rules']"),
    (dict(segment={"n_segments": [0]}), "segment['n_segments'] = [0]: must be a non-empty list"),
    (dict(videos="/no/such/folder"), "videos = '/no/such/folder': no such folder or CSV file"),
    (dict(layers=["layer9"]), "layers = ['layer9']: layer 'layer9' is not a module of model 'demo'"),
    (dict(model=torch.nn.Conv3d(3, 4, 3)), "layers = []: an nn.Module has no recommended layers"),
    (dict(model=torch.nn.Conv3d(3, 4, 3), layers=["nope"]), "layers = ['nope']: layer 'nope' is not a module"),
    (dict(model_options={"device": "tpu"}), "model_options['device'] = 'tpu': must be auto, cpu or cuda"),
    (dict(stages=["ingest", "explain"]), "stages[1] = 'explain': unknown stage"),
    (dict(model=3), "model = 3: must be a registry name or a torch.nn.Module"),
    (dict(model="x3d_mm"), "model = 'x3d_mm': unknown preset; close matches: ['x3d_m'"),
    (dict(segment="finer"), "segment = 'finer': unknown preset; close matches: ['fine'"),
    (dict(segmnt="reference"), "unexpected keyword argument 'segmnt'"),
])
def test_bad_arguments_fail_before_any_work_naming_the_argument(tmp_path, kwargs, message):
    out = tmp_path / "never"
    with pytest.raises((ValueError, TypeError)) as e:
        explain(output_dir=str(out), **kwargs)
    assert message in str(e.value)
    assert not out.exists()


def test_open_run_of_a_folder_that_is_no_run_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a run folder"):
        open_run(tmp_path)
