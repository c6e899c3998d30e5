"""Supervoxels: the fast contingency-table dedupe keeps exactly what the plain mask-by-mask
reference keeps, and the table describes every candidate.

The reference's answers over the clip sweeps are golden files (tests/golden/segmentation.json,
remade by `python -m tests.test_segmentation`), each stored with a digest of the label volumes
it was computed on: where today's SLIC gives other labels (another scikit-image), the test
runs the reference live instead, and one test always reruns it on one clip of each sweep, so
the golden answers cannot go stale unseen.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings

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


GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "segmentation.json")
SETTINGS = [
    dict(n_segments=(15, 50, 80)),
    dict(n_segments=(15, 50, 80, 150, 300), spacing=(2.0, 1.0, 1.0)),
    dict(n_segments=(80, 15, 50), compactness=10.0, iou_threshold=0.3),
    dict(n_segments=(10, 40), sigma=0.0, min_volume_fraction=0.01),
]


@functools.cache
def clips() -> dict[str, np.ndarray]:
    """The voxel-rule sweep's clips, rendered on first use (not at collection)."""
    return dict(_clips())


@functools.cache
def long_clips() -> dict[str, np.ndarray]:
    return dict(_long_clips())


def _digest(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels).tobytes()).hexdigest()[:16]


def _voxel_settings(name: str) -> dict:
    return SETTINGS[sum(map(ord, name)) % len(SETTINGS)]


def _stce_settings(name: str) -> dict:
    return STCE_SETTINGS[sum(map(ord, name)) % len(STCE_SETTINGS)]


def _voxel_reference(labels: np.ndarray, settings: dict) -> list[int]:
    return dedupe_mask_by_mask(labels, settings.get("min_volume_fraction", 0.001), settings.get("iou_threshold", 0.5),
                               dtype=bool)


def _stce_reference(labels: np.ndarray, settings: dict) -> list[int]:
    return dedupe_stce_mask_by_mask(labels, settings.get("min_volume_fraction", 0.001),
                                    settings.get("iou_threshold", 0.5))


@functools.cache
def _golden() -> dict[str, dict[str, dict]]:
    """The golden answers (none while the file is missing: the golden test then fails)."""
    if not os.path.exists(GOLDEN):
        return {"voxel": {}, "stce": {}}
    with open(GOLDEN) as f:
        return json.load(f)


def _expected(sweep: str, name: str, labels: np.ndarray, settings: dict) -> list[int]:
    """The reference's kept ids: the golden answer when it was computed on these labels, else
    the reference run live (and a warning to remake the golden file)."""
    entry = _golden()[sweep][name]
    if entry["labels"] == _digest(labels):
        return entry["kept"]
    warnings.warn(f"tests/golden/segmentation.json: {sweep}/{name} was computed on other SLIC labels; the "
                  "reference ran live (remake the file: python -m tests.test_segmentation)")
    return (_voxel_reference if sweep == "voxel" else _stce_reference)(labels, settings)


@pytest.mark.parametrize("name", sorted(_golden()["voxel"]))
def test_fast_dedupe_keeps_exactly_what_the_reference_keeps(name):
    settings = _voxel_settings(name)
    seg = segment_clip(clips()[name], SegmentParams(**settings))
    fast = seg.table["supervoxel_id"][seg.table["status"] == KEPT].tolist()
    assert fast == _expected("voxel", name, seg.labels, settings)  # same supervoxels, same order
    assert len(fast) > 3


def test_the_golden_answers_are_the_references_own():
    """The reference run live on one clip of each sweep gives its golden answer (the golden
    file is what the reference computes, not a copy of the fast path's output)."""
    golden = _golden()
    for sweep, clip_set, settings_of, reference in (("voxel", clips(), _voxel_settings, _voxel_reference),
                                                    ("stce", long_clips(), _stce_settings, _stce_reference)):
        assert sorted(golden[sweep]) == sorted(clip_set)  # one answer per clip of the sweep
        name = sorted(clip_set)[0]
        settings = settings_of(name)
        labels = segment_clip(clip_set[name], SegmentParams(dedupe=sweep, **settings)).labels
        assert golden[sweep][name]["labels"] == _digest(labels), f"remake {GOLDEN} (python -m tests.test_segmentation)"
        assert golden[sweep][name]["kept"] == reference(labels, settings)


def test_all_settings_agree_with_the_reference_on_one_clip():
    clip = next(iter(clips().values()))
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


STCE_SETTINGS = [dict(n_segments=(15, 50, 80)), dict(n_segments=(15, 50, 80, 150), spacing=(2.0, 1.0, 1.0)),
                 dict(n_segments=(50, 15), iou_threshold=0.3, min_volume_fraction=0.01)]


@pytest.mark.parametrize("name", sorted(_golden()["stce"]))
def test_stce_dedupe_keeps_exactly_what_the_authors_rule_keeps(name):
    settings = _stce_settings(name)
    seg = segment_clip(long_clips()[name], SegmentParams(dedupe="stce", **settings))
    transcription = _expected("stce", name, seg.labels, settings)
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
    for clip in list(long_clips().values())[:4]:
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
    clip = list(clips().values())[1]  # 24 x 80 x 80
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


def write_golden() -> None:
    """Run the reference over both sweeps and write tests/golden/segmentation.json."""
    out: dict[str, dict[str, dict]] = {"voxel": {}, "stce": {}}
    for sweep, clip_set, settings_of, reference in (("voxel", clips(), _voxel_settings, _voxel_reference),
                                                    ("stce", long_clips(), _stce_settings, _stce_reference)):
        for name, clip in clip_set.items():
            settings = settings_of(name)
            labels = segment_clip(clip, SegmentParams(dedupe=sweep, **settings)).labels
            out[sweep][name] = {"labels": _digest(labels), "kept": reference(labels, settings)}
            print(f"{sweep} {name}: {len(out[sweep][name]['kept'])} kept")
    os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
    with open(GOLDEN, "w") as f:  # one line per clip: reviewable diffs
        f.write("{\n" + ",\n".join(
            f'"{sweep}": {{\n' + ",\n".join(f"  {json.dumps(name)}: {json.dumps(entry)}"
                                             for name, entry in sorted(out[sweep].items())) + "\n}"
            for sweep in ("voxel", "stce")) + "\n}\n")


if __name__ == "__main__":
    write_golden()
