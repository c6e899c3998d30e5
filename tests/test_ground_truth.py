"""Ground-truth checks of an explanation: actor tube, mask mapping, shares."""

from __future__ import annotations

import numpy as np

from pipeline.evaluation.ground_truth import actor_tube, clip_mask, inside_fraction, positive_mass_inside


def test_tube_dilates_in_space_only_and_shares_are_measured():
    m = np.zeros((3, 9, 9), dtype=bool)
    m[1, 4, 4] = True
    tube = actor_tube(m, pixels=1)
    assert tube[1].sum() == 5 and not tube[0].any() and not tube[2].any()  # a plus sign, same frame
    sv = np.zeros_like(m)
    sv[1, 4, 3:7] = True  # 4 voxels, 3 in the tube (columns 3, 4, 5)
    assert inside_fraction(sv, tube) == 0.75
    imp = np.zeros(m.shape, dtype=np.float32)
    imp[1, 4, 4] = 3.0
    imp[0, 0, 0] = 1.0
    imp[2, 0, 0] = -5.0  # negative importance does not count
    assert positive_mass_inside(imp, tube) == 0.75
    assert np.isnan(positive_mass_inside(np.zeros_like(imp), tube))


def test_source_mask_maps_onto_the_clip_frames_and_size():
    src = np.zeros((10, 4, 4), dtype=bool)
    src[6, :2, :2] = True
    out = clip_mask(src, [2, 6], 8, 8)
    assert out.shape == (2, 8, 8) and not out[0].any()
    assert out[1, :4, :4].all() and out[1].sum() == 16


def test_pointing_game_and_top_share_iou_by_hand():
    from pipeline.evaluation.ground_truth import pointing_game, top_share_iou

    tube = np.zeros((2, 4, 4), dtype=bool)
    tube[:, 0, :2] = True  # two actor voxels per frame
    imp = np.zeros((2, 4, 4))
    imp[0, 0, 0] = 1.0  # frame 0: the single top voxel is on the actor
    imp[1, 3, 3] = 1.0  # frame 1: it is not
    assert pointing_game(imp, tube) == 0.5
    tied = np.ones((2, 4, 4))  # one region everywhere: the hit rate of a random tie-break, 2 of 16
    assert pointing_game(tied, tube) == 2 / 16
    assert np.isnan(pointing_game(imp, np.zeros_like(tube)))
    perfect = tube.astype(float)
    assert top_share_iou(perfect, tube) == 1.0
    half = np.zeros((2, 4, 4))
    half[:, 0, 0], half[:, 3, 3] = 1.0, 1.0  # the top 4 voxels: 2 on the actor -> IoU 2 / 6
    assert top_share_iou(half, tube) == 2 / 6
