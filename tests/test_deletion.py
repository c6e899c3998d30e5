"""The deletion/insertion plans and curves (method step 10) on label volumes whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.deletion import DELETE, INSERT, Plan, apply_plan, auc, concept_voxels, curve_plans, orderings
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


def test_curves_orders_and_areas():
    plans = curve_plans(["a", "b", "c"], DELETE)
    assert [sorted(p.concepts) for p in plans] == [[], ["a"], ["a", "b"], ["a", "b", "c"]]
    orders = orderings(["a", "b", "c", "d"], draws=2, seed=0)
    assert orders["top"] == ["a", "b", "c", "d"] and orders["bottom"] == ["d", "c", "b", "a"]
    assert sorted(orders["random0"]) == ["a", "b", "c", "d"] and orders == orderings(["a", "b", "c", "d"], 2, 0)
    other = orderings(["c", "a", "d", "b"], draws=2, seed=0)  # another ranking of the same concepts
    assert other["random0"] == orders["random0"] and other["random1"] == orders["random1"]
    assert auc([1.0, 1.0, 1.0]) == 1.0 and auc([1.0, 0.0, 0.0]) == pytest.approx(0.25) and auc([0.4]) == 0.4
