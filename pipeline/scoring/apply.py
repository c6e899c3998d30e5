"""A finished run's concepts applied to new videos (`python -m pipeline.score`), no rediscovery:
each supervoxel of a video goes to the nearest concept centre of a class at a layer, within that
concept's radius (as method step 9 does for the run's own scoring videos), and takes the
concept's mean TCAV score; the voxel maps follow as for the run (`voxel_importance`).

Which classes explain a video: the class the model predicts for it, and its label when the
label is a class of the run and another one."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from pipeline.scoring.voxel_importance import assign_to_concepts


def target_classes(label: Optional[str], predicted: Optional[str], run_classes: Sequence[str]) -> list[str]:
    """The run's classes that explain one video, the predicted one first."""
    return [k for k in dict.fromkeys([predicted, label]) if k is not None and k in run_classes]


def apply_concepts(vectors: np.ndarray, concepts: Sequence[dict[str, Any]]) -> tuple[list[Optional[str]], list[float]]:
    """Per supervoxel vector [N, C]: the concept it falls into among `concepts` (concepts.parquet
    rows of one class at one layer: concept, centroid, radius, tcav_mean), or None, and that
    concept's mean TCAV score (0 for none)."""
    if not len(concepts):
        return [None] * len(vectors), [0.0] * len(vectors)
    centroids = np.stack([np.asarray(c["centroid"], dtype=np.float32) for c in concepts])
    nearest, _ = assign_to_concepts(vectors, centroids, [float(c["radius"]) for c in concepts])
    names = [concepts[j]["concept"] if j >= 0 else None for j in nearest]
    scores = [float(concepts[j]["tcav_mean"]) if j >= 0 else 0.0 for j in nearest]
    return names, scores


def presence(video_id: str, target_class: str, layer: str, supervoxel_ids: Sequence[int],
             names: Sequence[Optional[str]], labels: np.ndarray, concepts: Sequence[dict[str, Any]]) -> list[dict]:
    """concept_presence/ rows of one video for one class at one layer: per concept present, its
    supervoxels, the voxels they cover (uint16 label volumes [R, L, H, W]), their share of the
    clip and their frames, with the concept's scores."""
    from pipeline.segmentation.supervoxels import supervoxel_mask

    by_name = {c["concept"]: c for c in concepts}
    members: dict[str, list[int]] = {}
    for sid, name in zip(supervoxel_ids, names):
        if name is not None:
            members.setdefault(name, []).append(int(sid))
    rows = []
    for name, sids in members.items():
        covered = np.zeros(labels.shape[1:], dtype=bool)
        for sid in sids:
            covered |= supervoxel_mask(labels, sid)
        frames = np.flatnonzero(covered.any(axis=(1, 2)))
        c = by_name[name]
        rows.append({"video_id": video_id, "target_class": target_class, "layer": layer, "concept": name,
                     "supervoxel_ids": sids, "voxels": int(covered.sum()), "share": float(covered.mean()),
                     "t0": int(frames[0]), "t1": int(frames[-1]) + 1, "tcav_mean": float(c["tcav_mean"]),
                     "causal_importance": c.get("causal_importance")})
    return sorted(rows, key=lambda r: -r["voxels"])
