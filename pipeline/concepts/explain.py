"""One class and one layer, end to end: discover concepts, score them with TCAV against random
sets, test them against the random baseline, rank them (method steps 5-8).

Pure numpy on the vectors the activation stage wrote; the Ray layer runs one call per
(class, layer) and writes the rows this returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from pipeline.concepts.discovery import Concept, discover_concepts
from pipeline.concepts.params import ConceptParams
from pipeline.concepts.stability import concept_stability
from pipeline.concepts.user import PREFIX, UserConcept, as_concept
from pipeline.scoring.tcav import (ConceptScores, RandomSets, gradients_are_constant, holm, rank_change, rescore,
                                   score_concepts, ties_broken)
from pipeline.scoring.voxel_importance import assign_to_concepts


def split_videos(video_ids: Sequence[str], discovery_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A class's videos, shuffled (seeded), split into discovery and scoring videos: disjoint."""
    ids = sorted(video_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_discovery = int(round(discovery_fraction * len(ids)))
    n_discovery = min(max(n_discovery, 1), len(ids) - 1) if len(ids) > 1 else len(ids)
    return [ids[i] for i in order[:n_discovery]], [ids[i] for i in order[n_discovery:]]


@dataclass
class _Entry:
    """A concept of the (class, layer) on its way to the tables: a discovered one or a user's."""

    name: str
    concept: Concept
    vectors: np.ndarray  # its members' vectors, nearest the centre first
    video_ids: list[str]
    ids: list[int]
    stability: float  # nan: not measured (a user concept, or stability off)


@dataclass
class Supervoxels:
    """Supervoxel vectors [N, C] of some videos (activations/), with each row's video and
    supervoxel id."""

    vectors: np.ndarray
    video_ids: Sequence[str]
    ids: Sequence[int]


def explain_class_layer(target_class: str, layer: str, discovery: Supervoxels, num_discovery_videos: int,
                        gradients: np.ndarray, random: RandomSets[np.ndarray], params: ConceptParams,
                        scoring: Optional[Supervoxels] = None,
                        randomised_gradients: Optional[np.ndarray] = None,
                        trainer: Any = None, user: Sequence[UserConcept] = ()) -> dict[str, Any]:
    """Concepts of one class at one layer with their TCAV scores, and the supervoxel scores of
    the scoring videos that voxel importance maps are made of.

    discovery: the discovery videos' supervoxels; gradients [V, C]: class-logit gradients of
    the scoring videos; random: whole-clip vectors of random other videos, the CAVs' negatives
    and the baseline; scoring: the scoring videos' supervoxels; randomised_gradients [V, C]: the
    gradients again from the model re-initialised after the layer (the randomisation check);
    trainer: the CAV trainer of `params.cav_model` when it is a user's (`user:<name>@<digest>`);
    user: the user's concepts at this layer (`pipeline.concepts.user`), scored, tested and ranked
    with the discovered ones.
    Returns rows for concepts, members, tcav and supervoxel scores, and notes.
    """
    notes: list[str] = []
    found = discover_concepts(discovery.vectors, discovery.video_ids, num_discovery_videos, k=params.k,
                              rules=params.rules, min_videos=params.min_videos, max_videos=params.max_videos,
                              seed=params.seed, niter=params.niter, nredo=params.nredo)
    notes.extend(found.notes)
    stability = concept_stability(discovery.vectors, discovery.video_ids, found, params)
    if gradients_are_constant(gradients):
        notes.append(f"layer {layer!r}: the class-logit gradient is the same for every video (the layer feeds the "
                     "classifier through global pooling), so every TCAV score is 0 or 1; explain an earlier layer")
    prefix = f"{target_class}/{layer}/"
    entries = [_entry(f"{prefix}concept{i}", c, discovery, stability[i])
               for i, c in enumerate(found.concepts)]
    for u in user:
        c = as_concept(u, params.max_videos)
        mine = Supervoxels(u.vectors, u.video_ids, u.ids)
        entries.append(_entry(f"{prefix}{PREFIX}{u.name}", c, mine, np.nan))
    scored, base = score_concepts([e.vectors for e in entries], random, gradients,
                                  seed=params.seed, model=trainer or params.cav_model,
                                  alpha=params.cav_alpha)
    p_values = _corrected([s.p_value for s in scored], params)
    magnitude_p = _corrected([s.magnitude_p_value for s in scored], params)
    means = np.array([s.mean for s in scored])
    ranks = np.empty(len(scored), dtype=np.int64)
    ranks[np.lexsort((np.arange(len(scored)), -means))] = np.arange(1, len(scored) + 1)  # by mean TCAV score

    concepts, members, tcav = [], [], []
    for i, (e, s) in enumerate(zip(entries, scored)):
        concepts.append({"target_class": target_class, "layer": layer, "concept": e.name,
                         "rank": int(ranks[i]), **_figures(e, s, float(p_values[i]),
                                                           float(magnitude_p[i]), params.p_threshold)})
        members += [{"target_class": target_class, "layer": layer, "concept": e.name, "video_id": vid,
                     "supervoxel_id": sid, "distance": float(d)}
                    for vid, sid, d in zip(e.video_ids, e.ids, e.concept.distances)]
        tcav += _tcav_rows(target_class, layer, e.name, s, params.cav_model)
    tcav += _tcav_rows(target_class, layer, "random", base, params.cav_model)
    return {"concepts": concepts, "members": members, "tcav": tcav, "notes": notes, "k": found.k,
            "ties": ties_broken(means, [s.magnitudes.mean() for s in scored]),
            "random_mean": float(base.scores.mean()),
            "supervoxel_scores": _supervoxel_scores([e.concept for e in entries], [e.name for e in entries],
                                                    means, scoring),
            "randomisation": None if randomised_gradients is None else
            _randomisation(scored, means, base, randomised_gradients, p_values, params)}


def _entry(name: str, c: Concept, source: Supervoxels, stability: float) -> _Entry:
    """A concept with its members' vectors and ids (`c.members` index `source`)."""
    return _Entry(
        name,
        c,
        source.vectors[c.members],
        [source.video_ids[m] for m in c.members],
        [int(source.ids[m]) for m in c.members],
        stability,
    )


def _figures(
    e: _Entry, s: ConceptScores, p: float, magnitude_p: float, threshold: float
) -> dict[str, Any]:
    """A concepts.parquet row's figures (all but its key and rank)."""
    c = e.concept
    return {
        "size": len(c.members),
        "num_videos": c.num_videos,
        "tcav_mean": s.mean,
        "tcav_std": s.std,
        "p_value": p,
        "significant": bool(p <= threshold),
        "cav_accuracy": float(s.cav_accuracies.mean()),
        "radius": c.radius,
        "rule": c.rule,
        "tcav_magnitude_mean": float(s.magnitudes.mean()),
        "tcav_magnitude_std": float(s.magnitudes.std()),
        "magnitude_p_value": magnitude_p,
        "magnitude_significant": bool(magnitude_p <= threshold),
        "stability": None if np.isnan(e.stability) else float(e.stability),
        "centroid": c.centroid.astype(np.float32),
    }


def _corrected(p_values: Sequence[float], params: ConceptParams) -> np.ndarray:
    """The p-values, Holm-corrected over the (class, layer)'s concepts when params say so."""
    p = np.asarray(p_values, dtype=float)
    return holm(p) if params.correction == "holm" and len(p) else p


def _tcav_rows(target_class: str, layer: str, name: str, s: ConceptScores,
               trainer: str) -> list[dict[str, Any]]:
    """tcav_scores/ rows of a concept (or of the random baseline, `name` "random"): one per
    random set, each with its CAV."""
    return [{"target_class": target_class, "layer": layer, "concept": name, "random_set": r,
             "cav_accuracy": float(acc), "tcav_score": float(score), "tcav_magnitude": float(mag),
             "direction": np.asarray(direction, np.float32), "trainer": trainer}
            for r, (score, acc, mag, direction) in enumerate(zip(s.scores, s.cav_accuracies,
                                                                s.magnitudes, s.directions))]


def _supervoxel_scores(found: Sequence[Any], names: Sequence[str], means: np.ndarray,
                       scoring: Optional[Supervoxels]) -> list[dict[str, Any]]:
    """Voxel importance (step 9): each scoring supervoxel's concept (the nearest within its
    radius) and that concept's mean TCAV score (0 outside every concept)."""
    if scoring is None or not len(scoring.vectors):
        return []
    centroids = np.stack([c.centroid for c in found]) if found else np.zeros((0, 1))
    nearest, _ = assign_to_concepts(scoring.vectors, centroids, [c.radius for c in found])
    return [{"video_id": vid, "supervoxel_id": int(sid), "concept": names[j] if j >= 0 else None,
             "score": float(means[j]) if j >= 0 else 0.0}
            for vid, sid, j in zip(scoring.video_ids, scoring.ids, nearest)]


def _randomisation(scored: Sequence[ConceptScores], means: np.ndarray, base: ConceptScores,
                   randomised_gradients: np.ndarray, p_values: np.ndarray,
                   params: ConceptParams) -> dict[str, Any]:
    """The model-randomisation check: the same CAVs scored on the randomised model's gradients."""
    after, after_base = rescore(scored, base, randomised_gradients)
    after_p = _corrected([s.p_value for s in after], params)
    before_sig, after_sig = p_values <= params.p_threshold, after_p <= params.p_threshold
    return {**rank_change(means, [s.mean for s in after]),
            "significant_before": int(before_sig.sum()), "significant_after": int(after_sig.sum()),
            "significance_changed": int((before_sig != after_sig).sum()),
            "random_baseline_mean_after": float(after_base.scores.mean()),
            "tcav_mean_after": [float(s.mean) for s in after]}
