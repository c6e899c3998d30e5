"""The deletion/insertion plans and curves (method step 10) on label volumes whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.deletion import (DELETE, INSERT, Plan, apply_plan, auc, concept_voxels,
                                         curve_plans, in_video, orderings)
from pipeline.segmentation.supervoxels import supervoxel_id


def _labels() -> np.ndarray:
    """Two resolutions over a 2x4x4 clip: resolution 0 splits left/right, resolution 1 top/bottom."""
    r0 = np.zeros((2, 4, 4), np.uint16)
    r0[:, :, 2:] = 1
    r1 = np.zeros((2, 4, 4), np.uint16)
    r1[:, 2:, :] = 1
    return np.stack([r0, r1])


def test_a_concepts_voxels_are_the_union_of_its_supervoxels():
    ids = [supervoxel_id(0, 0), supervoxel_id(0, 1), supervoxel_id(1, 0), supervoxel_id(1, 1)]
    voxels = concept_voxels(_labels(), ids, ["a", None, "a", "b"])
    assert set(voxels) == {"a", "b"}
    expected_a = np.zeros((2, 4, 4), bool)
    expected_a[:, :, :2] = True
    expected_a[:, :2, :] = True
    assert np.array_equal(voxels["a"], expected_a)  # left half or top half
    assert voxels["b"].sum() == 2 * 8


def test_delete_fills_the_concept_and_insert_keeps_only_it():
    ids = [supervoxel_id(0, 0), supervoxel_id(0, 1)]
    voxels = concept_voxels(_labels(), ids, ["left", "right"])
    clip = np.full((2, 4, 4, 3), 200, np.uint8)
    deleted = apply_plan(clip, voxels, Plan(DELETE, frozenset({"left"})), fill=117)
    assert (deleted[:, :, :2] == 117).all() and (deleted[:, :, 2:] == 200).all()
    inserted = apply_plan(clip, voxels, Plan(INSERT, frozenset({"left"})), fill=117)
    assert (inserted[:, :, :2] == 200).all() and (inserted[:, :, 2:] == 117).all()
    assert (apply_plan(clip, voxels, Plan(DELETE, frozenset()), fill=117) == clip).all()  # k = 0: the clip
    assert (apply_plan(clip, voxels, Plan(INSERT, frozenset()), fill=117) == 117).all()  # k = 0: all fill


def test_a_plan_naming_concepts_absent_from_a_video_makes_the_clip_of_its_present_ones():
    """What lets the evaluate stage run each distinct clip of a video once."""
    voxels = concept_voxels(_labels(), [supervoxel_id(0, 0)], ["left"])
    clip = np.random.default_rng(0).integers(0, 255, (2, 4, 4, 3), dtype=np.uint8)
    for mode in (DELETE, INSERT):
        plan = Plan(mode, frozenset({"left", "elsewhere"}))
        assert in_video(plan, voxels) == Plan(mode, frozenset({"left"}))
        same = apply_plan(clip, voxels, in_video(plan, voxels), 117)
        assert np.array_equal(apply_plan(clip, voxels, plan, 117), same)
    assert in_video(Plan(DELETE, frozenset({"elsewhere"})), voxels) == Plan(DELETE, frozenset())


def test_each_distinct_clip_of_a_video_runs_once_and_every_plan_gets_its_outcome(monkeypatch):
    """`plan_outcomes` on a host whose model scores a clip by its mean pixel: the same outcomes,
    in the plans' order, as running every plan, from fewer clips."""
    from types import SimpleNamespace

    import torch

    from pipeline.evaluation import outcomes

    clips_run = []

    def logits_of_mean_pixel(module, clips, spec, batch_size, autocast):
        clips_run.extend(clips)
        return np.array([[float(c.float().mean()) / 255, 0.5] for c in clips], dtype=np.float32)

    monkeypatch.setattr(outcomes, "clips_logits", logits_of_mean_pixel)
    host = SimpleNamespace(class_index=lambda row: 0, device=torch.device("cpu"),
                           model=SimpleNamespace(module=None), spec=None,
                           params=SimpleNamespace(batch_size=4, autocast=False))
    ids = [supervoxel_id(0, 0), supervoxel_id(0, 1)]
    assignments = {"layer2": (ids, ["left", "right"])}
    clip = np.random.default_rng(1).integers(0, 255, (2, 4, 4, 3), dtype=np.uint8)
    named = [(DELETE, ()), (DELETE, ("gone",)), (DELETE, ("left", "gone")), (INSERT, ("gone",)),
             (DELETE, ("left",)), (INSERT, ()), (INSERT, ("right",))]
    plans = {"layer2": [Plan(mode, frozenset(concepts)) for mode, concepts in named]}
    args = ({"label": "a"}, _labels(), assignments, plans, 117.0)
    every = outcomes.plan_outcomes(host, *args, clip=clip, distinct=False)["layer2"]
    assert len(clips_run) == 7
    clips_run.clear()
    distinct = outcomes.plan_outcomes(host, *args, clip=clip)["layer2"]
    assert len(clips_run) == 4  # the clip, left deleted, all fill, right kept
    assert distinct == every and len(distinct["prob"]) == 7
    assert distinct["prob"][0] == distinct["prob"][1] and distinct["prob"][2] == distinct["prob"][4]


def test_curves_orders_and_areas():
    plans = curve_plans(["a", "b", "c"], DELETE)
    assert [sorted(p.concepts) for p in plans] == [[], ["a"], ["a", "b"], ["a", "b", "c"]]
    orders = orderings(["a", "b", "c", "d"], draws=2, seed=0)
    assert orders["top"] == ["a", "b", "c", "d"] and orders["bottom"] == ["d", "c", "b", "a"]
    assert sorted(orders["random0"]) == ["a", "b", "c", "d"] and orders == orderings(["a", "b", "c", "d"], 2, 0)
    other = orderings(["c", "a", "d", "b"], draws=2, seed=0)  # another ranking of the same concepts
    assert other["random0"] == orders["random0"] and other["random1"] == orders["random1"]
    assert auc([1.0, 1.0, 1.0]) == 1.0 and auc([1.0, 0.0, 0.0]) == pytest.approx(0.25) and auc([0.4]) == 0.4


def test_cross_fitting_orders_each_half_by_the_other_and_averages():
    """Concept `a` matters in every video, `b` only in the first half: in sample the order is a
    then b; cross-fitted, half 0 is ordered by half 1 (where only a matters) and the reverse."""
    from pipeline.evaluation.deletion import EvaluateParams
    from pipeline.evaluation.summary import causal_importance, crossfit_summary, curves, halves

    vids = [f"v{i}" for i in range(8)]
    split = halves(vids, seed=0)
    assert sorted(split[0] + split[1]) == vids and len(split[0]) == 4 and not set(split[0]) & set(split[1])
    assert halves(vids[:3], seed=0) == []  # too few to split
    names = ["a", "b", "c"]

    def measured(v: str) -> dict:
        matters = {"a"} | ({"b"} if v in split[0] else set())
        out = {}
        for size in range(4):  # every subset the curves can ask for: prefixes of any order
            import itertools
            for removed in itertools.combinations(names, size):
                gone = bool(matters & set(removed))
                out[Plan(DELETE, frozenset(removed))] = (0.1 if gone else 0.9, not gone)
                kept = set(names) - set(removed)
                out[Plan(INSERT, frozenset(kept))] = (0.9 if matters & kept else 0.1, bool(matters & kept))
        return out

    outcomes = {v: {"L": measured(v)} for v in vids}
    ranked = {("k", "L"): names}
    half_causal = {h: causal_importance(ranked, {v: outcomes[v] for v in part}, {v: "k" for v in part})[0]
                   for h, part in enumerate(split)}
    assert half_causal[0]["b"] > 0 and half_causal[1]["b"] == 0
    params = EvaluateParams(max_k=3, random_draws=1)
    curve_list = curves(ranked, {"a": 0.8, "b": 0.4, "c": 0.0}, params, half_causal)[("k", "L")]
    rows, summary = crossfit_summary("k", "L", curve_list, {v: o["L"] for v, o in outcomes.items()}, names, split)
    # removing the top concept (a, in both orders) takes every video's class away: accuracy 0 at k = 1
    points = [r for r in rows if r["kind"] == "point" and r["mode"] == DELETE and r["order"] == "top"]
    assert [p["accuracy"] for p in points][:2] == [1.0, 0.0]
    random_top1 = np.mean([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0]])  # per half: a, b, c removed in turn, averaged
    assert summary["crossfit_causal_top1_deletion_accuracy_drop_vs_random"] == pytest.approx(random_top1 - 0.0)
    assert summary["crossfit_causal_deletion_auc_top"] < summary["crossfit_causal_deletion_auc_bottom"]
    assert summary["crossfit_causal_deletion_prob_auc_top"] < summary["crossfit_causal_deletion_prob_auc_bottom"]
    # the paired gap over the eight videos: every video loses its class sooner in the top-first order
    # (a first), so the gap is the difference of the areas and its interval excludes 0
    for what in ("", "prob_"):
        gap = summary[f"crossfit_causal_deletion_{what}auc_gap"]
        lo, hi = summary[f"crossfit_causal_deletion_{what}auc_gap_ci95"]
        assert gap == pytest.approx(summary[f"crossfit_causal_deletion_{what}auc_top"]
                                    - summary[f"crossfit_causal_deletion_{what}auc_bottom"])
        assert lo <= gap <= hi < 0
        assert summary[f"crossfit_causal_deletion_{what}auc_videos_top_below"] > 0.5
    assert {r["ranking"] for r in rows} == {"causal_crossfit"}


def test_deletion_gap_interval_straddles_zero_when_videos_disagree():
    """Half the videos favour each order by the same amount: gap 0, an interval around it, and
    half the videos below; one video's tie counts half."""
    from pipeline.evaluation.summary import deletion_gap

    g = deletion_gap(np.array([0.2, 0.8] * 6), np.array([0.8, 0.2] * 6), seed=0)
    assert g["gap"] == 0 and g["ci"][0] < 0 < g["ci"][1] and g["videos_top_below"] == 0.5
    assert deletion_gap(np.array([0.5, 0.2]), np.array([0.5, 0.4]), seed=0)["videos_top_below"] == 0.75
    assert deletion_gap(np.array([0.2, 0.8] * 6), np.array([0.8, 0.2] * 6), seed=0) == g  # seeded


def test_masking_importance_sees_concepts_that_matter_only_together():
    """The class goes only when both `a` and `b` are removed: single removal gives them nothing,
    random masking ranks them above the unrelated `c` and `d`."""
    from pipeline.evaluation.deletion import MaskingParams
    from pipeline.evaluation.summary import causal_importance, masking_importance, masking_plans, single_concept_plans

    names = ["a", "b", "c", "d"]
    masks = masking_plans("k", "L", names, MaskingParams(masks=64, ratio=0.5), seed=0)
    assert masks == masking_plans("k", "L", names, MaskingParams(masks=64, ratio=0.5), seed=0)  # seeded
    assert masks != masking_plans("k2", "L", names, MaskingParams(masks=64, ratio=0.5), seed=0)  # per class and layer
    rng = np.random.default_rng(0)

    def prob(removed: frozenset) -> float:
        return (0.1 if {"a", "b"} <= removed else 0.9) + rng.normal(0, 0.01)

    outcomes = {f"v{i}": {p: (prob(p.concepts), prob(p.concepts) > 0.5) for p in single_concept_plans(names) + masks}
                for i in range(6)}
    single, _ = causal_importance({("k", "L"): names}, {v: {"L": o} for v, o in outcomes.items()},
                                  {v: "k" for v in outcomes})
    assert max(abs(single[cn]) for cn in names) < 0.05  # removing one alone changes nothing
    joint = masking_importance(names, masks, outcomes)
    assert min(joint["a"], joint["b"]) > 0.2 > 0.05 > max(abs(joint["c"]), abs(joint["d"]))
