"""Voxel importance: nearest concept within its radius, per-voxel mean over resolutions."""

from __future__ import annotations

import numpy as np

from pipeline.scoring.voxel_importance import assign_to_concepts, voxel_map


def test_supervoxels_go_to_the_nearest_concept_within_its_radius():
    centroids = np.array([[0.0, 0.0], [10.0, 0.0]])
    radii = [1.0, 3.0]
    vectors = np.array([[0.5, 0.0], [9.0, 2.0], [5.0, 0.0], [0.0, 1.5]])
    concept, dist = assign_to_concepts(vectors, centroids, radii)
    assert concept.tolist() == [0, 1, -1, -1]  # the last two lie outside the nearest radius
    assert np.allclose(dist[:2], [0.5, np.sqrt(5)])


def test_voxel_score_is_the_mean_over_the_covering_supervoxels():
    labels = np.zeros((2, 1, 2, 4), dtype=np.uint16)
    labels[0, 0] = [[0, 0, 1, 1], [0, 0, 1, 1]]  # coarse: left / right halves
    labels[1, 0] = [[0, 1, 2, 3], [0, 1, 2, 3]]  # fine: columns
    # Coarse left half scores 1.0; fine column 0 scores 0.5, column 3 is listed but unassigned (0);
    # the coarse right half and fine columns 1, 2 are not listed (dropped supervoxels).
    m = voxel_map(labels, resolutions=[0, 1, 1], label_ids=[0, 0, 3], scores=[1.0, 0.5, 0.0])
    assert m.dtype == np.float32 and m.shape == (1, 2, 4)
    assert np.allclose(m[0, 0], [0.75, 1.0, 0.0, 0.0])
