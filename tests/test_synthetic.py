"""The synthetic corpus: deterministic, class decided by motion only, ground truth readable."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pipeline.data.synthetic import (CLASSES, SyntheticParams, ACTOR_COLOUR, ensure_corpus,
                                     load_ground_truth_mask, render_video)
from pipeline.data.video import ClipSpec, read_clip


def test_classes_differ_only_in_the_order_of_the_actor_track():
    """Same random stream, three classes: every frame of one class is a frame of the
    other classes too (only the order differs), so no single frame tells the class."""
    params = SyntheticParams()
    videos = {c: render_video(params, c, np.random.default_rng(5)) for c in CLASSES}
    ref = videos["advance"].actor_mask.reshape(params.num_frames, -1)
    ref_sorted = sorted(map(bytes, np.packbits(ref, axis=1)))
    for c in CLASSES:
        m = videos[c].actor_mask.reshape(params.num_frames, -1)
        assert sorted(map(bytes, np.packbits(m, axis=1))) == ref_sorted
    # The orderings really differ: retreat is advance backwards, jitter is neither.
    assert np.array_equal(videos["retreat"].actor_mask, videos["advance"].actor_mask[::-1])
    assert not np.array_equal(videos["jitter"].actor_mask, videos["advance"].actor_mask)
    # Background and distractors do not depend on the class.
    outside = ~videos["advance"].actor_mask.any(0)
    assert np.array_equal(videos["advance"].frames[0][outside], videos["retreat"].frames[0][outside])


def test_actor_track_statistics_do_not_depend_on_the_class():
    """Actor positions per frame, pooled over many videos, have the same distribution in
    every class (a per-frame classifier has nothing to go on)."""
    params = SyntheticParams()
    centroids = {}
    for c in CLASSES:
        pts = []
        for j in range(60):
            m = render_video(params, c, np.random.default_rng([3, j])).actor_mask
            ys, xs = np.nonzero(m[4])  # one fixed frame index
            pts.append((ys.mean(), xs.mean()))
        centroids[c] = np.array(pts)
    for c in CLASSES[1:]:
        assert np.abs(centroids[c].mean(0) - centroids["advance"].mean(0)).max() < 6.0


def test_generation_is_deterministic_and_ground_truth_matches_the_video(tmp_path):
    params = SyntheticParams(videos_per_class=2, seed=3)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert ensure_corpus(a, params) and ensure_corpus(b, params)
    assert not ensure_corpus(a, params)  # already there: not regenerated
    for c in CLASSES:
        for j in range(2):
            vid = f"{c}/v{j:04d}"
            assert open(os.path.join(a, vid + ".mp4"), "rb").read() == open(os.path.join(b, vid + ".mp4"), "rb").read()
    meta = json.load(open(os.path.join(a, "meta.json")))
    assert meta["classes"] == list(CLASSES) and meta["seed"] == 3
    mask = load_ground_truth_mask(a, "retreat/v0001")
    assert mask.shape == (16, 112, 112) and mask.dtype == bool
    assert 100 < mask[0].sum() < 200  # one arrow per frame
    frames = read_clip(os.path.join(a, "retreat/v0001.mp4"), ClipSpec()).frames.astype(np.float32)
    dist = np.abs(frames - ACTOR_COLOUR).sum(-1)
    inner = mask.copy()
    inner[:, 1:-1, 1:-1] &= mask[:, :-2, 1:-1] & mask[:, 2:, 1:-1] & mask[:, 1:-1, :-2] & mask[:, 1:-1, 2:]
    assert np.median(dist[inner]) < 40  # the actor's pixels are the actor's colour
    assert np.median(dist[~mask]) > 150
    with pytest.raises(KeyError, match="not in the synthetic corpus"):
        load_ground_truth_mask(a, "advance/v9999")


def test_a_foreign_folder_is_not_overwritten(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="dataset.root"):
        ensure_corpus(str(root), SyntheticParams(videos_per_class=2))
    assert (root / "precious.txt").read_text() == "keep me"


def _make(root: str, n: int) -> None:
    ensure_corpus(root, SyntheticParams(videos_per_class=n, num_frames=4, size=32))


def test_two_processes_generating_other_corpora_into_one_root_leave_one_whole_corpus(tmp_path):
    import multiprocessing

    root = str(tmp_path / "corpus")
    ctx = multiprocessing.get_context("fork")
    for _ in range(3):
        procs = [ctx.Process(target=_make, args=(root, n)) for n in (2, 3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0]
        meta = json.load(open(os.path.join(root, "meta.json")))
        videos = sorted(f for k in CLASSES for f in os.listdir(os.path.join(root, k)))
        assert len(videos) == meta["videos_per_class"] * len(CLASSES)  # the corpus its meta.json says, whole
        assert sorted(os.listdir(tmp_path)) == ["corpus"]  # no half-written or set-aside folder left
