"""The reference's supervoxel step, done the plain way: one float mask per candidate, every
candidate compared with every kept mask over the whole volume.

Deliberately slow. It is the oracle for `pipeline.segmentation.supervoxels.segment_clip`
(the tests check both keep exactly the same supervoxels) and the baseline in
`bench/segment.py`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pipeline.segmentation.supervoxels import slic_labels, supervoxel_id


def dedupe_mask_by_mask(labels: np.ndarray, min_volume_fraction: float = 0.001,
                        iou_threshold: float = 0.5, dtype: type = float) -> list[int]:
    """Ids of the kept supervoxels, deciding candidate by candidate as the method describes.

    `dtype=float` is the reference script's float64 masks (the benchmark baseline); the
    tests pass `bool`, the same decisions computed faster.
    """
    total = float(np.prod(labels.shape[1:]))
    kept_masks: list[np.ndarray] = []
    kept_ids: list[int] = []
    for r in range(labels.shape[0]):
        for label in range(int(labels[r].max()) + 1):
            mask = (labels[r] == label).astype(dtype)
            if mask.sum() < min_volume_fraction * total:
                continue
            duplicate = False
            for other in kept_masks:
                if dtype is bool:
                    inter, union = np.count_nonzero(mask & other), np.count_nonzero(mask | other)
                else:
                    inter = float((mask * other).sum())
                    union = float(((mask + other) > 0).sum())
                if union > 0 and inter / union > iou_threshold:
                    duplicate = True
                    break
            if not duplicate:
                kept_masks.append(mask)
                kept_ids.append(int(supervoxel_id(r, label)))
    return kept_ids


def segment_clip_reference(clip: np.ndarray, n_segments: Sequence[int] = (15, 50, 80), compactness: float = 20.0,
                           sigma: float = 1.0, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                           min_volume_fraction: float = 0.001,
                           iou_threshold: float = 0.5) -> tuple[np.ndarray, list[int]]:
    """SLIC at each resolution, then the mask-by-mask dedupe. Returns (labels, kept ids)."""
    labels = np.stack([slic_labels(clip, n, compactness, sigma, spacing, max_num_iter=10) for n in n_segments])
    return labels, dedupe_mask_by_mask(labels, min_volume_fraction, iou_threshold)


def dedupe_stce_mask_by_mask(labels: np.ndarray, min_volume_fraction: float = 0.001,
                             iou_threshold: float = 0.5) -> list[int]:
    """Ids of the supervoxels the authors' code keeps, transcribed mask by mask from its rule
    (see `pipeline.segmentation.aligned`): each mask cropped to its frames, small when its mean
    over those frames is not above the fraction, compared with every mask kept at an earlier
    resolution after cutting the longer of the two to the shorter's length around its centre."""
    kept_masks: list[np.ndarray] = []
    kept_ids: list[int] = []
    for r in range(labels.shape[0]):
        resolution_masks, resolution_ids = [], []
        for label in range(int(labels[r].max()) + 1):
            whole = labels[r] == label
            frames = np.flatnonzero(whole.any(axis=(1, 2)))
            if not len(frames):
                continue
            mask = whole[frames[0]:frames[-1] + 1]
            if not np.mean(mask) > min_volume_fraction:
                continue
            duplicate = False
            for seen in kept_masks:
                short, long_ = (mask, seen) if len(mask) < len(seen) else (seen, mask)
                start = (len(long_) - len(short)) // 2
                cut = long_[start:start + len(short)]
                inter = np.count_nonzero(short & cut)
                union = np.count_nonzero(short) + np.count_nonzero(cut) - inter
                if float(inter) / float(union) > iou_threshold:
                    duplicate = True
                    break
            if not duplicate:
                resolution_masks.append(mask)
                resolution_ids.append(int(supervoxel_id(r, label)))
        kept_masks.extend(resolution_masks)
        kept_ids.extend(resolution_ids)
    return kept_ids
