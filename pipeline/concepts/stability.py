"""Concept stability: does a discovered concept come back when discovery runs again on a
bootstrap resample of the discovery videos? Discovered concepts are fragile (k-means on a few
thousand vectors, acceptance rules at thresholds), so every concept carries the share of
resamples in which it reappears.

A resample draws the discovery videos with replacement (seeded); a video drawn twice counts as
two videos for the acceptance rules. Its concepts are matched one-to-one to the original ones
(the Hungarian assignment on the score below), and an original concept reappears when its
match holds at least `overlap` of its members that the resample still has: the members' share
that falls in the match's k-means cluster (the cluster, not the members it kept, which are
capped at `max_videos` nearest the centre).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pipeline.concepts.discovery import Discovery, discover_concepts
from pipeline.concepts.params import ConceptParams


def resample_rows(video_ids: Sequence[str], seed: int, b: int) -> tuple[np.ndarray, list[str]]:
    """Bootstrap resample `b` of the videos: the rows of the drawn videos (a video drawn twice,
    twice) and a video id per row that tells the copies apart."""
    videos, inverse = np.unique(np.asarray(video_ids, dtype=str), return_inverse=True)  # sorted, as sorted(set())
    order = np.argsort(inverse, kind="stable")  # one sort, not a scan of every row per video
    groups = np.split(order, np.cumsum(np.bincount(inverse, minlength=len(videos)))[:-1])
    videos = videos.tolist()
    rows_of = dict(zip(videos, groups))
    draw = np.random.default_rng([seed, 13, b]).integers(0, len(videos), len(videos))
    rows, pseudo = [], []
    for j, i in enumerate(draw):
        rows.append(rows_of[videos[i]])
        pseudo += [f"{videos[i]}#{j}"] * len(rows_of[videos[i]])
    return np.concatenate(rows), pseudo


def concept_stability(vectors: np.ndarray, video_ids: Sequence[str], discovery: Discovery,
                      params: ConceptParams) -> list[float]:
    """Per concept of `discovery` (found on these vectors and video ids), the share of
    `params.stability.resamples` bootstrap resamples in which it reappears (see the module)."""
    from scipy.optimize import linear_sum_assignment

    b_count = params.stability.resamples
    if not b_count or not discovery.concepts:
        return [float("nan")] * len(discovery.concepts)
    hits = np.zeros(len(discovery.concepts))
    for b in range(b_count):
        rows, pseudo = resample_rows(video_ids, params.seed, b)
        found = discover_concepts(vectors[rows], pseudo, len(set(pseudo)), k=params.k, rules=params.rules,
                                  min_videos=params.min_videos, max_videos=params.max_videos,
                                  seed=params.seed + 1 + b, niter=params.niter, nredo=params.nredo)
        if not found.concepts:
            continue
        present = set(rows.tolist())
        clusters = [set(rows[found.assignment == c.cluster].tolist()) for c in found.concepts]
        score = np.zeros((len(discovery.concepts), len(clusters)))
        for i, c in enumerate(discovery.concepts):
            mine = [m for m in c.members.tolist() if m in present]
            if mine:
                score[i] = [sum(m in cl for m in mine) / len(mine) for cl in clusters]
        matched_rows, matched_cols = linear_sum_assignment(-score)
        for i, j in zip(matched_rows, matched_cols):
            hits[i] += score[i, j] >= params.stability.overlap
    return (hits / b_count).tolist()
