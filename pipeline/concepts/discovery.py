"""Concept discovery (method step 5): k-means on a class's supervoxel vectors with FAISS, then
the cluster-acceptance rules of 3D ACE (or ACE).

Pure numpy/FAISS; the Ray layer runs one call per (class, layer).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from pipeline.concepts.params import ConceptParams as P  # the defaults

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AcceptanceRules:
    """A cluster of m members from n distinct videos, out of D discovery videos, is a concept
    when any rule holds: n > common * m;  n > a1 * m and n > b1 * D;  n > a2 * m and n > b2 * D."""

    common: float
    a1: float
    b1: float
    a2: float
    b2: float


RULE_PRESETS = {
    "3dace": AcceptanceRules(0.4, 0.1, 0.1, 0.08, 0.35),
    "ace": AcceptanceRules(0.5, 0.25, 0.25, 0.1, 0.5),
}


@dataclass
class Concept:
    """An accepted cluster: its members (indices into the input vectors) nearest the centre
    first, their distances, the centre and the radius (the largest kept member distance)."""

    members: np.ndarray  # int64 indices, by distance
    distances: np.ndarray  # float32, L2 to the centre
    centroid: np.ndarray  # float32 [C]
    radius: float
    num_videos: int
    cluster: int  # k-means cluster id
    rule: str  # which acceptance rule held first


@dataclass
class Discovery:
    concepts: list[Concept]
    k: int  # clusters actually used (may be below the requested K)
    assignment: np.ndarray  # cluster of every vector
    distances: np.ndarray  # L2 distance of every vector to its centre
    notes: list[str] = field(default_factory=list)


def kmeans(vectors: np.ndarray, k: int, seed: int = P.seed, niter: int = P.niter, nredo: int = P.nredo,
           use_gpu: Optional[bool] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FAISS k-means: (centroids [k, C], assignment [N], L2 distance to the centre [N]).

    The best of `nredo` seeded runs (lowest objective), as sklearn's `n_init` does for the
    reference: a single random start can merge two clusters. The GPU index is used when FAISS
    sees a GPU (or as `use_gpu` says).
    """
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if use_gpu is None:
        use_gpu = hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
    km = faiss.Kmeans(x.shape[1], int(k), niter=int(niter), nredo=int(nredo), seed=int(seed), verbose=False,
                      gpu=bool(use_gpu), min_points_per_centroid=1, max_points_per_centroid=1 << 20)
    km.train(x)
    sq, idx = km.index.search(x, 1)
    return km.centroids.astype(np.float32), idx[:, 0].astype(np.int64), np.sqrt(np.maximum(sq[:, 0], 0))


def accept(assignment: np.ndarray, distances: np.ndarray, centroids: np.ndarray, video_ids: Sequence[str],
           num_discovery_videos: int, rules: AcceptanceRules, min_videos: int,
           max_videos: int) -> list[Concept]:
    """The clusters that become concepts, in cluster order (ranking comes later, from scores)."""
    videos = np.asarray(video_ids)
    concepts = []
    for c in range(len(centroids)):
        members = np.flatnonzero(assignment == c)
        m = len(members)
        if m <= min_videos:
            continue
        n = len(np.unique(videos[members]))
        d = num_discovery_videos
        if n > rules.common * m:
            rule = "highly common"
        elif n > rules.a1 * m and n > rules.b1 * d:
            rule = "mildly common, populated"
        elif n > rules.a2 * m and n > rules.b2 * d:
            rule = "mildly populated, common"
        else:
            continue
        order = members[np.argsort(distances[members], kind="stable")][:max_videos]
        dist = distances[order].astype(np.float32)
        concepts.append(Concept(members=order, distances=dist, centroid=centroids[c], radius=float(dist.max()),
                                num_videos=len(np.unique(videos[order])), cluster=c, rule=rule))
    return concepts


def discover_concepts(vectors: np.ndarray, video_ids: Sequence[str], num_discovery_videos: int, k: int = P.k,
                      rules: str | AcceptanceRules = P.rules, min_videos: int = P.min_videos,
                      max_videos: int = P.max_videos, seed: int = P.seed, niter: int = P.niter, nredo: int = P.nredo,
                      use_gpu: Optional[bool] = None) -> Discovery:
    """K-means on the supervoxel vectors of one class and layer, then the acceptance rules.

    With fewer vectors than K, K shrinks to the number of vectors (and a note says so).
    """
    if isinstance(rules, str):
        if rules not in RULE_PRESETS:
            raise ValueError(f"unknown acceptance rules {rules!r}; presets: {sorted(RULE_PRESETS)}")
        rules = RULE_PRESETS[rules]
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(video_ids):
        raise ValueError(f"vectors must be [N, C] with one video id each; got {vectors.shape} and {len(video_ids)} ids")
    notes = []
    k_used = int(k)
    if len(vectors) < k_used:
        k_used = max(1, len(vectors))
        notes.append(f"only {len(vectors)} supervoxel vectors: K shrinks from {k} to {k_used}")
        log.warning(notes[-1])
    centroids, assignment, distances = kmeans(vectors, k_used, seed=seed, niter=niter, nredo=nredo, use_gpu=use_gpu)
    concepts = accept(assignment, distances, centroids, video_ids, num_discovery_videos, rules, min_videos,
                      max_videos)
    return Discovery(concepts=concepts, k=k_used, assignment=assignment, distances=distances, notes=notes)
