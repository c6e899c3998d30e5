"""The paper's experiments (method step 10) and causal concept importance, as pure functions:
which voxels a set of concepts covers in a video, the clip with them removed (mean-filled) or
with only them kept, the plans a video is evaluated under, and areas under the curves.

A video's supervoxels are assigned to concepts by the concepts stage (`voxel_importance/`:
each kept supervoxel of a scoring video goes to its nearest concept within the radius, or to
none). A concept's voxels in a video are the union of its supervoxels' voxels (supervoxels of
several resolutions overlap: a voxel goes with a concept when any supervoxel covering it does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from pipeline.params import require

DELETE, INSERT = "delete", "insert"


@dataclass
class MaskingParams:
    """Randomised concept masking (after VTCD's CRIS; `evaluate.masking`): per (class, layer),
    `masks` random subsets of the class's concepts, each concept in a subset with probability
    `ratio` (seeded), removed at once from every scoring video. A concept's importance is the
    effect of keeping it on the class probability, fitted over the masks
    (`summary.masking_importance`), so it sees concepts that matter only together. masks 0:
    off. It needs more masks than concepts: with ten concepts, 48 masks told a pair that matters
    only jointly from the eight others in 50 seeded draws of 50, 32 in 49, 16 in 27."""

    masks: int = 48
    ratio: float = 0.5

    def check(self) -> None:
        require(self.masks >= 0, "masking.masks", self.masks, "must be >= 0 (0: off)")
        require(0 < self.ratio < 1, "masking.ratio", self.ratio, "must be in (0, 1)")


@dataclass
class EvaluateParams:
    """The paper's deletion/insertion experiments and causal concept importance (method step
    10; the config group `evaluate`), on the scoring videos of every class, per explained layer.

    max_k: curves run k = 0 .. min(concepts, max_k); random_draws: seeded random orders per
    curve; seed: their seed (and the masks'); masking: randomised concept masking
    (`MaskingParams`). Removed voxels get the mean pixel `ActivateParams.fill`.
    """

    max_k: int = 10
    random_draws: int = 3
    seed: int = 0
    masking: MaskingParams = field(default_factory=MaskingParams)

    def __post_init__(self) -> None:
        if isinstance(self.masking, dict):  # from a plain config section
            self.masking = MaskingParams(**self.masking)

    def check(self) -> None:
        """Raise ParameterError naming the first field out of range."""
        require(self.max_k >= 1, "max_k", self.max_k, "must be >= 1")
        require(self.random_draws >= 1, "random_draws", self.random_draws, "must be >= 1")
        self.masking.check()


def concept_voxels(labels: np.ndarray, supervoxel_ids: Sequence[int],
                   concepts: Sequence[Optional[str]]) -> dict[str, np.ndarray]:
    """bool [T, H, W] per concept: the voxels of the video's supervoxels assigned to it.

    labels: uint16 [R, T, H, W] label volumes; supervoxel_ids and concepts: the assignment
    (None: a supervoxel no concept claims)."""
    from pipeline.segmentation.supervoxels import supervoxel_mask

    out: dict[str, np.ndarray] = {}
    for sid, concept in zip(supervoxel_ids, concepts):
        if concept is None:
            continue
        mask = supervoxel_mask(labels, sid)
        out[concept] = out[concept] | mask if concept in out else mask
    return out


@dataclass(frozen=True)
class Plan:
    """A clip to evaluate: `delete` fills the voxels of `concepts` with the mean pixel,
    `insert` fills everything but them (from a wholly mean-filled clip, add the concepts)."""

    mode: str
    concepts: frozenset[str]


def in_video(plan: Plan, voxels: dict[str, np.ndarray]) -> Plan:
    """The plan with the concepts that have no voxels in this video left out: it makes the same
    clip (`apply_plan`)."""
    present = frozenset(c for c in plan.concepts if c in voxels)
    return plan if present == plan.concepts else Plan(plan.mode, present)


def apply_plan(clip: np.ndarray, voxels: dict[str, np.ndarray], plan: Plan, fill: float) -> np.ndarray:
    """uint8 [T, H, W, 3]: the clip under the plan."""
    covered = np.zeros(clip.shape[:3], dtype=bool)
    for c in plan.concepts:
        if c in voxels:
            covered |= voxels[c]
    keep = ~covered if plan.mode == DELETE else covered
    value = np.uint8(np.clip(round(fill), 0, 255))
    return np.where(keep[..., None], clip, value).astype(np.uint8)


def curve_plans(order: Sequence[str], mode: str) -> list[Plan]:
    """The k = 0 .. K plans of one curve: the first k concepts of `order` removed (delete) or
    kept (insert)."""
    return [Plan(mode, frozenset(order[:k])) for k in range(len(order) + 1)]


def orderings(ranked: Sequence[str], draws: int, seed: int) -> dict[str, list[str]]:
    """The concept orders a curve follows: `top` (most important first), `bottom` (least
    important first) and `random0..` (seeded shuffles of the concepts in name order, so that
    two rankings of the same concepts share their random curves, and their plans run once)."""
    rng = np.random.default_rng(seed)
    out = {"top": list(ranked), "bottom": list(reversed(ranked))}
    canonical = sorted(ranked)
    for i in range(draws):
        out[f"random{i}"] = [canonical[j] for j in rng.permutation(len(canonical))]
    return out


def auc(values: Sequence[float]) -> float:
    """Area under a curve sampled at k = 0 .. K, with k scaled to [0, 1] (trapezoids); one
    point gives that value."""
    v = np.asarray(values, dtype=float)
    if len(v) == 1:
        return float(v[0])
    return float(np.sum((v[1:] + v[:-1]) / 2.0) / (len(v) - 1))
