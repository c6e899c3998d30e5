"""One class and one layer, end to end: discover concepts, score them with TCAV against random
sets, test them against the random baseline, rank them (method steps 5-8).

Pure numpy on the vectors the activation stage wrote; the Ray layer runs one call per
(class, layer) and writes the rows this returns.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from pipeline.concepts.discovery import discover_concepts
from pipeline.concepts.params import ConceptParams
from pipeline.concepts.stability import concept_stability
from pipeline.scoring.tcav import gradients_are_constant, holm, rank_change, rescore, score_concepts, ties_broken
from pipeline.scoring.voxel_importance import assign_to_concepts


def split_videos(video_ids: Sequence[str], discovery_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A class's videos, shuffled (seeded), split into discovery and scoring videos: disjoint."""
    ids = sorted(video_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_discovery = int(round(discovery_fraction * len(ids)))
    n_discovery = min(max(n_discovery, 1), len(ids) - 1) if len(ids) > 1 else len(ids)
    return [ids[i] for i in order[:n_discovery]], [ids[i] for i in order[n_discovery:]]


def draw_random_sets(pool: np.ndarray, count: int, size: int, seed: int) -> list[np.ndarray]:
    """`count` random sets of `size` rows (row indices into the pool), each drawn without
    replacement, independently (seeded)."""
    rng = np.random.default_rng(seed)
    size = min(size, len(pool))
    return [np.sort(rng.choice(len(pool), size=size, replace=False)) for _ in range(count)]


def explain_class_layer(target_class: str, layer: str, sv_vectors: np.ndarray, sv_video_ids: Sequence[str],
                        sv_ids: Sequence[int], num_discovery_videos: int, gradients: np.ndarray,
                        random_sets: Sequence[np.ndarray], extra_random: np.ndarray, params: ConceptParams,
                        scoring_vectors: Optional[np.ndarray] = None, scoring_video_ids: Sequence[str] = (),
                        scoring_sv_ids: Sequence[int] = (),
                        randomised_gradients: Optional[np.ndarray] = None) -> dict[str, Any]:
    """Concepts of one class at one layer with their TCAV scores, and the supervoxel scores of
    the scoring videos that voxel importance maps are made of.

    sv_vectors [N, C]: supervoxel vectors of the discovery videos (with their video and
    supervoxel ids); gradients [V, C]: class-logit gradients of the scoring videos;
    random_sets: N arrays of whole-clip vectors of random videos; extra_random: one more, for
    the random-vs-random baseline; scoring_vectors: supervoxel vectors of the scoring videos.
    Returns rows for concepts, members, tcav and supervoxel scores, and notes.
    """
    notes: list[str] = []
    discovery = discover_concepts(sv_vectors, sv_video_ids, num_discovery_videos, k=params.k, rules=params.rules,
                                  min_videos=params.min_videos, max_videos=params.max_videos, seed=params.seed,
                                  niter=params.niter, nredo=params.nredo)
    notes.extend(discovery.notes)
    stability = concept_stability(sv_vectors, sv_video_ids, discovery, params)
    if gradients_are_constant(gradients):
        notes.append(f"layer {layer!r}: the class-logit gradient is the same for every video (the layer feeds the "
                     "classifier through global pooling), so every TCAV score is 0 or 1; explain an earlier layer")
    scored, base = score_concepts([sv_vectors[c.members] for c in discovery.concepts], random_sets, extra_random,
                                  gradients, seed=params.seed, model=params.cav_model, alpha=params.cav_alpha)
    baseline, baseline_acc = base.scores, base.cav_accuracies
    p_values = np.array([s.p_value for s in scored])
    magnitude_p = np.array([s.magnitude_p_value for s in scored])
    if params.correction == "holm" and len(p_values):
        p_values, magnitude_p = holm(p_values), holm(magnitude_p)
    means = np.array([s.mean for s in scored])
    randomisation = None
    if randomised_gradients is not None:
        after, after_base = rescore(scored, base, randomised_gradients)
        after_p = np.array([s.p_value for s in after])
        if params.correction == "holm" and len(after_p):
            after_p = holm(after_p)
        randomisation = {
            **rank_change(means, [s.mean for s in after]),
            "significant_before": int((p_values <= params.p_threshold).sum()),
            "significant_after": int((after_p <= params.p_threshold).sum()),
            "significance_changed": int(((p_values <= params.p_threshold) != (after_p <= params.p_threshold)).sum()),
            "random_baseline_mean_after": float(after_base.scores.mean()),
            "tcav_mean_after": [float(s.mean) for s in after],
        }
    ranks = np.empty(len(scored), dtype=np.int64)
    ranks[np.lexsort((np.arange(len(scored)), -means))] = np.arange(1, len(scored) + 1)  # by mean TCAV score

    concepts, members, tcav = [], [], []
    for i, (c, s) in enumerate(zip(discovery.concepts, scored)):
        name = f"{target_class}/{layer}/concept{i}"
        concepts.append({
            "target_class": target_class, "layer": layer, "concept": name, "rank": int(ranks[i]),
            "size": len(c.members), "num_videos": c.num_videos, "tcav_mean": s.mean, "tcav_std": s.std,
            "p_value": float(p_values[i]), "significant": bool(p_values[i] <= params.p_threshold),
            "cav_accuracy": float(s.cav_accuracies.mean()), "radius": c.radius, "rule": c.rule,
            "tcav_magnitude_mean": float(s.magnitudes.mean()), "tcav_magnitude_std": float(s.magnitudes.std()),
            "magnitude_p_value": float(magnitude_p[i]),
            "magnitude_significant": bool(magnitude_p[i] <= params.p_threshold),
            "stability": None if np.isnan(stability[i]) else float(stability[i]),
            "centroid": c.centroid.astype(np.float32),
        })
        for m, d in zip(c.members, c.distances):
            members.append({"target_class": target_class, "layer": layer, "concept": name,
                            "video_id": sv_video_ids[m], "supervoxel_id": int(sv_ids[m]), "distance": float(d)})
        for r, (score, acc, mag) in enumerate(zip(s.scores, s.cav_accuracies, s.magnitudes)):
            tcav.append({"target_class": target_class, "layer": layer, "concept": name, "random_set": r,
                         "cav_accuracy": float(acc), "tcav_score": float(score), "tcav_magnitude": float(mag)})
    for r, (score, acc, mag) in enumerate(zip(baseline, baseline_acc, base.magnitudes)):
        tcav.append({"target_class": target_class, "layer": layer, "concept": "random", "random_set": r,
                     "cav_accuracy": float(acc), "tcav_score": float(score), "tcav_magnitude": float(mag)})
    # Voxel importance (step 9): a concept's importance is its mean TCAV score.
    supervoxel_scores = []
    if scoring_vectors is not None and len(scoring_vectors):
        centroids = np.stack([c.centroid for c in discovery.concepts]) if discovery.concepts else np.zeros((0, 1))
        nearest, _ = assign_to_concepts(scoring_vectors, centroids, [c.radius for c in discovery.concepts])
        for vid, sid, j in zip(scoring_video_ids, scoring_sv_ids, nearest):
            supervoxel_scores.append({"video_id": vid, "supervoxel_id": int(sid),
                                      "concept": concepts[j]["concept"] if j >= 0 else None,
                                      "score": float(means[j]) if j >= 0 else 0.0})
    return {"concepts": concepts, "members": members, "tcav": tcav, "notes": notes, "k": discovery.k,
            "ties": ties_broken(means, [s.magnitudes.mean() for s in scored]),
            "random_mean": float(baseline.mean()), "supervoxel_scores": supervoxel_scores,
            "randomisation": randomisation}
