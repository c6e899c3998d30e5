"""Voxel importance (method step 9): every supervoxel of a scored video goes to the nearest
concept centre (only within that concept's radius) and takes the concept's importance; a
voxel's score is the mean over the kept supervoxels that cover it (one per resolution at
most) of their scores, 0 for a supervoxel no concept claims."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np


def assign_to_concepts(vectors: np.ndarray, centroids: np.ndarray,
                       radii: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Nearest concept of each vector [N, C] among centroids [K, C], or -1 when it lies outside
    that concept's radius. Returns (concept index [N], distance to it [N])."""
    vectors = np.asarray(vectors, dtype=np.float64)
    if len(centroids) == 0 or len(vectors) == 0:
        return np.full(len(vectors), -1, dtype=np.int64), np.full(len(vectors), np.inf)
    centroids = np.asarray(centroids, dtype=np.float64)
    d2 = (vectors**2).sum(1)[:, None] - 2 * vectors @ centroids.T + (centroids**2).sum(1)[None, :]
    dist = np.sqrt(np.maximum(d2, 0))
    nearest = dist.argmin(1)
    best = dist[np.arange(len(vectors)), nearest]
    inside = best <= np.asarray(radii, dtype=np.float64)[nearest] + 1e-6
    return np.where(inside, nearest, -1), best


def voxel_map(labels: np.ndarray, resolutions: Sequence[int], label_ids: Sequence[int],
              scores: Sequence[float]) -> np.ndarray:
    """float32 [L, H, W]: per voxel, the mean score of the listed supervoxels covering it.

    labels: uint16 [R, L, H, W] label volumes; supervoxel i is `labels[resolutions[i]] ==
    label_ids[i]` with score `scores[i]` (0 for an unassigned one). Voxels that no listed
    supervoxel covers score 0.
    """
    total = np.zeros(labels.shape[1:], dtype=np.float64)
    count = np.zeros(labels.shape[1:], dtype=np.int32)
    resolutions, label_ids, scores = (np.asarray(a) for a in (resolutions, label_ids, scores))
    for r in np.unique(resolutions):
        pick = resolutions == r
        n = int(labels[r].max()) + 1
        per_label = np.zeros(n)
        listed = np.zeros(n, dtype=np.int32)
        per_label[label_ids[pick]] = scores[pick]
        listed[label_ids[pick]] = 1
        total += per_label[labels[r]]
        count += listed[labels[r]]
    return (total / np.maximum(count, 1)).astype(np.float32)


def importance_map(labels: np.ndarray, supervoxel_ids: Sequence[int], scores: Sequence[float]) -> np.ndarray:
    """The voxel map of one `voxel_importance/` row: supervoxel ids (resolution << 16 | label)
    and their scores, over the video's label volumes [R, L, H, W]."""
    from pipeline.segmentation.supervoxels import split_supervoxel_id

    pairs = [split_supervoxel_id(s) for s in supervoxel_ids]
    return voxel_map(labels, [r for r, _ in pairs], [lab for _, lab in pairs], scores)


def causal_scores(concepts: Sequence[Optional[str]], causal: Mapping[str, Optional[float]]) -> list[float]:
    """Per supervoxel, its concept's causal importance (0 where it has no concept, or the
    concept none)."""
    return [float(causal.get(c) or 0.0) if c is not None else 0.0 for c in concepts]
