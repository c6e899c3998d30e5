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
