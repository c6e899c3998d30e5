"""Supervoxels: the fast contingency-table dedupe keeps exactly what the plain mask-by-mask
reference keeps, and the table describes every candidate."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.synthetic import CLASSES, SyntheticParams, render_video
from tests.reference.segmentation import dedupe_mask_by_mask, dedupe_stce_mask_by_mask
from pipeline.segmentation.supervoxels import (DROPPED_DUPLICATE, DROPPED_SHORT, DROPPED_SMALL, KEPT,
                                               SegmentParams, segment_clip, split_supervoxel_id)


def _texture_clip(rng: np.random.Generator, t: int, h: int, w: int) -> np.ndarray:
    """Blocky colour regions drifting over time, plus noise: not synthetic-corpus-like."""
    from skimage.transform import resize

    coarse = rng.uniform(0, 255, size=(max(2, t // 4), max(2, h // 16), max(2, w // 16), 3))
    vol = resize(coarse, (t, h, w, 3), order=int(rng.integers(0, 2)), preserve_range=True)
    vol += rng.normal(0, rng.uniform(2, 25), size=vol.shape)
    return np.clip(vol, 0, 255).astype(np.uint8)


def _clips() -> list[tuple[str, np.ndarray]]:
    clips = []
    for j, label in enumerate(CLASSES * 3):  # 9 synthetic clips, two geometries
        size, frames = (112, 16) if j % 2 == 0 else (80, 24)
        p = SyntheticParams(size=size, num_frames=frames)
        clips.append((f"synthetic-{label}-{j}", render_video(p, label, np.random.default_rng([42, j])).frames))
    rng = np.random.default_rng(7)
    for j in range(12):  # generated textures, varied sizes and lengths
        t, h, w = int(rng.integers(8, 33)), int(rng.choice([48, 64, 80, 112])), int(rng.choice([48, 64, 96, 112]))
        clips.append((f"texture-{j}-{t}x{h}x{w}", _texture_clip(rng, t, h, w)))
    return clips


CLIPS = _clips()
SETTINGS = [
    dict(n_segments=(15, 50, 80)),
    dict(n_segments=(15, 50, 80, 150, 300), spacing=(2.0, 1.0, 1.0)),
    dict(n_segments=(80, 15, 50), compactness=10.0, iou_threshold=0.3),
    dict(n_segments=(10, 40), sigma=0.0, min_volume_fraction=0.01),
]


@pytest.mark.parametrize("name, clip", CLIPS, ids=[n for n, _ in CLIPS])
def test_fast_dedupe_keeps_exactly_what_the_reference_keeps(name, clip):
    settings = SETTINGS[sum(map(ord, name)) % len(SETTINGS)]
    seg = segment_clip(clip, SegmentParams(**settings))
    reference = dedupe_mask_by_mask(seg.labels, settings.get("min_volume_fraction", 0.001),
                                    settings.get("iou_threshold", 0.5), dtype=bool)
    fast = seg.table["supervoxel_id"][seg.table["status"] == KEPT].tolist()
    assert fast == reference  # same supervoxels, same order
    assert len(fast) > 3


def test_all_settings_agree_with_the_reference_on_one_clip():
    clip = CLIPS[0][1]
    for settings in SETTINGS:
        seg = segment_clip(clip, SegmentParams(**settings))
        reference = dedupe_mask_by_mask(seg.labels, settings.get("min_volume_fraction", 0.001),
                                        settings.get("iou_threshold", 0.5), dtype=bool)
        assert seg.table["supervoxel_id"][seg.table["status"] == KEPT].tolist() == reference


def _long_clips() -> list[tuple[str, np.ndarray]]:
    """16 to 64 frames, where the authors' temporal alignment matters: textures and synthetic clips."""
    rng = np.random.default_rng(11)
    clips = []
    for j in range(8):
        t, h, w = int(rng.integers(16, 65)), int(rng.choice([48, 64, 80])), int(rng.choice([48, 64, 96]))
        clips.append((f"texture-{j}-{t}x{h}x{w}", _texture_clip(rng, t, h, w)))
    for j, (label, frames) in enumerate((("advance", 32), ("retreat", 48), ("jitter", 64), ("advance", 16))):
        p = SyntheticParams(size=80, num_frames=frames)
        clips.append((f"synthetic-{label}-{frames}", render_video(p, label, np.random.default_rng([43, j])).frames))
    return clips


LONG_CLIPS = _long_clips()
STCE_SETTINGS = [dict(n_segments=(15, 50, 80)), dict(n_segments=(15, 50, 80, 150), spacing=(2.0, 1.0, 1.0)),
                 dict(n_segments=(50, 15), iou_threshold=0.3, min_volume_fraction=0.01)]


@pytest.mark.parametrize("name, clip", LONG_CLIPS, ids=[n for n, _ in LONG_CLIPS])
def test_stce_dedupe_keeps_exactly_what_the_authors_rule_keeps(name, clip):
    settings = STCE_SETTINGS[sum(map(ord, name)) % len(STCE_SETTINGS)]
    seg = segment_clip(clip, SegmentParams(dedupe="stce", **settings))
    transcription = dedupe_stce_mask_by_mask(seg.labels, settings.get("min_volume_fraction", 0.001),
                                             settings.get("iou_threshold", 0.5))
    t = seg.table
    assert t["supervoxel_id"][t["status"] == KEPT].tolist() == transcription  # same supervoxels, same order
    assert len(transcription) > 3
    dup = t["status"] == DROPPED_DUPLICATE
    assert all(reason.startswith("aligned Jaccard") for reason in t["reason"][dup])
    assert (t["max_iou"][dup] > settings.get("iou_threshold", 0.5)).all()


def test_the_two_rules_differ_on_long_clips_and_agree_where_nothing_is_cut():
    """The rules keep different supervoxels once clips are longer than their supervoxels; on a
    clip where every candidate spans every frame, the two are the same rule."""
    differ = 0
    for _, clip in LONG_CLIPS[:4]:
        stce = segment_clip(clip, SegmentParams(dedupe="stce")).table
        voxel = segment_clip(clip, SegmentParams()).table
        differ += len(set(stce["supervoxel_id"][stce["status"] == KEPT]) ^
                      set(voxel["supervoxel_id"][voxel["status"] == KEPT]))
    assert differ > 0
    still = np.repeat(_texture_clip(np.random.default_rng(5), 1, 64, 64), 8, axis=0)  # 8 identical frames
    stce, voxel = (segment_clip(still, SegmentParams(dedupe=rule, sigma=0.0)).table for rule in ("stce", "voxel"))
    assert (stce["t1"] - stce["t0"] == 8).all()
    assert stce["status"].tolist() == voxel["status"].tolist()


def test_table_describes_every_candidate():
    clip = CLIPS[1][1]  # 24 x 80 x 80
    seg = segment_clip(clip, SegmentParams(n_segments=[15, 50, 80], spacing=[3.0, 1.0, 1.0]), min_frames=20)
    t = seg.table
    n_labels = sum(int(seg.labels[r].max()) + 1 for r in range(3))
    assert len(t["supervoxel_id"]) == n_labels
    assert seg.labels.dtype == np.uint16 and seg.labels.shape == (3, 24, 80, 80)
    statuses = set(t["status"])
    assert statuses <= {KEPT, DROPPED_SMALL, DROPPED_DUPLICATE, DROPPED_SHORT}
    assert DROPPED_SHORT in statuses  # spacing 3 in time makes some supervoxels short
    for i in range(len(t["supervoxel_id"])):
        mask = seg.mask(int(t["supervoxel_id"][i]))
        r, label = split_supervoxel_id(int(t["supervoxel_id"][i]))
        assert (r, label) == (t["resolution"][i], t["label"][i])
        assert mask.sum() == t["volume"][i]
        ts, ys, xs = np.nonzero(mask)
        assert (ts.min(), ts.max() + 1, ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) == tuple(
            int(t[k][i]) for k in ("t0", "t1", "y0", "y1", "x0", "x1"))
        if t["status"][i] == DROPPED_SHORT:
            assert t["t1"][i] - t["t0"][i] < 20 and "model window" in t["reason"][i]
        if t["status"][i] == DROPPED_DUPLICATE:
            assert t["max_iou"][i] > 0.5 and "IoU" in t["reason"][i]
        if t["status"][i] == KEPT:
            assert t["t1"][i] - t["t0"][i] >= 20 and t["max_iou"][i] <= 0.5


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="uint8"):
        segment_clip(np.zeros((4, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[L, H, W, 3\]"):
        segment_clip(np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="n_segments"):
        segment_clip(np.zeros((4, 8, 8, 3), dtype=np.uint8), SegmentParams(n_segments=[0]))
    with pytest.raises(ValueError, match="dedupe"):
        segment_clip(np.zeros((4, 8, 8, 3), dtype=np.uint8), SegmentParams(dedupe="iou"))
