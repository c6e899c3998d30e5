"""`ace3d compare`: two runs' concepts matched one-to-one per class by their members' overlap."""

from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pyarrow.parquet as pq

from tests.conftest import call_main


def test_concepts_match_one_to_one_by_the_overlap_of_their_members():
    from pipeline.compare import match_class

    def rows(names, significant):
        return [{"target_class": "k", "layer": "l", "concept": n, "significant": s,
                 "tcav_mean": 0.5, "causal_importance": 0.1} for n, s in zip(names, significant)]

    a_members = {"c0": set(range(10)), "c1": set(range(10, 20)), "c2": set(range(20, 30))}
    b_members = {"d0": set(range(5)), "d1": set(range(10, 20)) | set(range(30, 40)),
                 "d2": set(range(100, 110))}
    out = match_class(rows(["c0", "c1", "c2"], [True, True, True]),
                      rows(["d0", "d1", "d2"], [True, False, True]), a_members, b_members, 0.1)
    got = {(r["concept_a"], r["concept_b"]): (r["jaccard"], r["status"]) for r in out}
    assert got == {("c0", "d0"): (0.5, "shared"), ("c1", "d1"): (0.5, "a only"),
                   ("c2", None): (None, "a only"), (None, "d2"): (None, "b only")}


def test_two_runs_of_one_model_share_every_concept(small_run, tmp_path):
    """A run against its own copy: every concept matched to its namesake, overlap 1; a run over
    other videos is refused, naming why."""
    from tests.test_report import check_in_browser

    out, twin = small_run["out"], str(tmp_path / "twin")
    shutil.copytree(out, twin)
    res = call_main(f"run_a={out}", f"run_b={twin}", f"output={tmp_path / 'cmp'}",
                    module="pipeline.compare")
    assert res.returncode == 0, res.stderr
    table = pd.read_parquet(tmp_path / "cmp" / "comparison.parquet")
    concepts = pd.read_parquet(os.path.join(out, "concepts.parquet"))
    assert len(table) == len(concepts) and (table.concept_a == table.concept_b).all()
    assert (table.jaccard == 1).all() and set(table.concept_a) == set(concepts.concept)
    summary = json.load(open(tmp_path / "cmp" / "comparison.json"))
    assert summary["shared"] == concepts.significant.sum() == summary["significant_a"]
    assert summary["share_a_matched_significant"] == summary["share_b_matched_significant"] == 1.0
    check_in_browser(str(tmp_path / "cmp" / "index.html"))
    videos = pq.read_table(os.path.join(twin, "videos.parquet"))
    pq.write_table(videos.slice(1), os.path.join(twin, "videos.parquet"))
    res = call_main(f"run_a={out}", f"run_b={twin}", module="pipeline.compare")
    assert res.returncode == 2 and "hold other videos" in res.stderr
