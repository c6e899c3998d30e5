"""CAVs, TCAV scores and their significance (method steps 6-8). Pure numpy/scipy/sklearn.

A CAV separates a concept's vectors from a random set's vectors with a linear classifier; it
is the unit normal pointing toward the concept. The TCAV score of a (concept, random set) pair
is the fraction of the class's scoring videos whose class-logit gradient has a positive
component along the CAV (the reference takes the gradient of the loss and counts negative
components: the same thing). A concept is significant when its scores over the random sets
differ from the random-vs-random baseline's (two-sided paired t-test, p <= 0.01 by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, Optional, Sequence, TypeVar

import numpy as np

from pipeline.scoring.trainers import (  # noqa: F401 (CAV, fit_cav, ... re-exported)
    CAV, builtin, fit_cav, fit_cavs_fast, stratified_split)


def fit_cavs(positives: Sequence[np.ndarray], negatives: Sequence[np.ndarray], seeds: Sequence[int],
             *, model: Any, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """CAVs of many (concept, random set) pairs: (unit directions [P, C], hold-out accuracies [P]).

    `model`: a trainer (`pipeline.scoring.trainers.CavTrainer`: a user's own) or a built-in's
    name: `torch` runs the reference SGDClassifier's algorithm for all pairs at once in torch
    (pipeline.scoring.cav_batch); `fastcav` is the closed form (`fit_cavs_fast`); `sgd` and
    `logistic` fit one sklearn classifier per pair."""
    trainer = builtin(model, alpha) if isinstance(model, str) else model
    directions, accuracies = trainer.fit(positives, negatives, seeds)
    directions, accuracies = np.asarray(directions, np.float32), np.asarray(accuracies, float)
    if len(positives) and (len(directions) != len(positives) or len(accuracies) != len(positives)
                           or not np.isfinite(directions).all()):
        raise ValueError(f"CAV trainer {getattr(trainer, 'name', trainer)!r} returned "
                         f"{len(directions)} directions and {len(accuracies)} accuracies for "
                         f"{len(positives)} pairs, or a direction that is not finite")
    if len(directions) and not isinstance(model, str):  # a user's: unit length, as stored
        norms = np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)
        directions = (directions / norms).astype(np.float32)
    return directions, accuracies


def tcav_scores(gradients: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """TCAV score of each CAV (rows of [P, C]): the fraction of videos whose gradient points along it."""
    if len(directions) == 0:
        return np.zeros(0)
    return (directional_derivatives(gradients, directions) > 0).mean(0)


def directional_derivatives(gradients: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """s[v, p] = gradient of video v . direction p, in float64: what both TCAV scores count."""
    return np.asarray(gradients, np.float64) @ np.asarray(directions, np.float64).T


def tcav_magnitudes(gradients: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """The graded TCAV score of each CAV (Captum's magnitude score): the positive share of the
    directional derivatives' mass over the videos, sum max(0, s) / sum |s| with s = gradient .
    CAV; 0 where every s is 0 (as the sign count). Unlike the sign count it tells apart CAVs
    that every video, or none, points along, by how far."""
    if len(directions) == 0:
        return np.zeros(0)
    return graded_scores(directional_derivatives(gradients, directions))


def graded_scores(s: np.ndarray) -> np.ndarray:
    """tcav_magnitudes from the directional derivatives s [V, P]."""
    total = np.abs(s).sum(0)
    return np.divide(np.maximum(s, 0).sum(0), total, out=np.zeros(len(total)), where=total > 0)


def tcav_score(gradients: np.ndarray, cav: np.ndarray) -> float:
    """Fraction of videos whose class-logit gradient (rows of [V, C]) points along the CAV."""
    return float(tcav_scores(gradients, np.asarray(cav)[None])[0])


def gradients_are_constant(gradients: np.ndarray, rtol: float = 1e-2) -> bool:
    """True when every video has (nearly) the same gradient, as when the layer feeds a linear
    classifier through global pooling (mean, max or both: the gradient averaged over the
    layer's positions is the same): every TCAV score is then 0 or 1. `rtol` covers bf16: the
    demo's last layer, constant in float32, spreads by 0.2% of its largest entry there, where
    a layer whose gradient depends on the video spreads by 20%."""
    g = np.asarray(gradients, dtype=np.float64)
    if len(g) < 2:
        return False
    return bool(np.abs(g - g.mean(0)).max() <= rtol * max(np.abs(g).max(), 1e-12))


def significance(concept_scores: Sequence[float], random_scores: Sequence[float]) -> float:
    """Two-sided paired t-test p-value between a concept's scores and the random baseline's
    over the same random sets. Constant differences: p = 1 when zero, 0 otherwise (the t
    statistic is undefined there)."""
    from scipy.stats import ttest_rel

    diff = np.asarray(concept_scores, float) - np.asarray(random_scores, float)
    if np.allclose(diff, diff[0]):
        return 1.0 if np.isclose(diff[0], 0.0) else 0.0
    return float(ttest_rel(concept_scores, random_scores).pvalue)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (an option beyond the reference)."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.empty(len(p))
    running = 0.0
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


T = TypeVar("T")
U = TypeVar("U")


@dataclass(frozen=True)
class RandomSets(Generic[T]):
    """A class's random counterexamples (method step 7): each of `sets` is the negatives of one
    CAV per concept; `baseline` is one more set, whose CAV against each of `sets` gives the
    random-vs-random scores a concept is tested against. A set is whatever a step holds of it:
    row indices of the pool, video ids, whole-clip vectors [n, C]."""

    sets: list[T]
    baseline: T

    def map(self, fn: Callable[[T], U]) -> "RandomSets[U]":
        return RandomSets([fn(s) for s in self.sets], fn(self.baseline))


def draw_random_sets(pool: Sequence, count: int, size: int, seed: int) -> RandomSets[np.ndarray]:
    """`count` random sets of `size` rows of the pool (row indices) and the baseline set, each
    drawn without replacement, independently (seeded; the baseline last)."""
    rng = np.random.default_rng(seed)
    size = min(size, len(pool))
    drawn = [np.sort(rng.choice(len(pool), size=size, replace=False)) for _ in range(count + 1)]
    return RandomSets(drawn[:-1], drawn[-1])


@dataclass
class ConceptScores:
    """TCAV of one concept (or of the random baseline) against every random set, and its test
    against the baseline."""

    scores: np.ndarray  # [N] TCAV score per random set
    cav_accuracies: np.ndarray  # [N]
    p_value: float
    directions: Optional[np.ndarray] = None  # [N, C] the CAVs
    magnitudes: Optional[np.ndarray] = None  # [N] graded TCAV score per random set (tcav_magnitudes)
    magnitude_p_value: float = float("nan")  # the same test on the graded scores

    @property
    def mean(self) -> float:
        return float(self.scores.mean())

    @property
    def std(self) -> float:
        return float(self.scores.std())


def score_concepts(concepts: Sequence[np.ndarray], random: RandomSets[np.ndarray], gradients: np.ndarray, *,
                   seed: int, model: str, alpha: float) -> tuple[list[ConceptScores], ConceptScores]:
    """Every CAV of one (class, layer) in one fit: each concept against each random set, and the
    random-vs-random baseline (the baseline set against each random set). Random set i is
    fitted with seed + i in every pair. Returns (per-concept scores with their p-value against
    the baseline, the baseline's scores)."""
    random_sets, extra = random.sets, random.baseline
    n = len(random_sets)
    positives = [c for c in concepts for _ in range(n)] + [extra] * n
    negatives = [r for _ in concepts for r in random_sets] + list(random_sets)
    seeds = [seed + i for _ in range(len(concepts) + 1) for i in range(n)]
    directions, accuracies = fit_cavs(positives, negatives, seeds, model=model, alpha=alpha)
    derivatives = directional_derivatives(gradients, directions)  # [V, CAVs], once for both scores
    scores = (derivatives > 0).mean(0).reshape(len(concepts) + 1, n)
    magnitudes = graded_scores(derivatives).reshape(len(concepts) + 1, n)
    accuracies = np.asarray(accuracies).reshape(len(concepts) + 1, n)
    directions = directions.reshape(len(concepts) + 1, n, -1)
    baseline = ConceptScores(scores=scores[-1], cav_accuracies=accuracies[-1], p_value=float("nan"),
                             directions=directions[-1], magnitudes=magnitudes[-1])
    return ([ConceptScores(scores=s, cav_accuracies=a, p_value=significance(s, baseline.scores), directions=d,
                           magnitudes=m, magnitude_p_value=significance(m, baseline.magnitudes))
             for s, a, d, m in zip(scores[:-1], accuracies[:-1], directions[:-1], magnitudes[:-1])], baseline)


def ties_broken(means: Sequence[float], magnitudes: Sequence[float]) -> dict[str, int]:
    """Pairs of concepts whose mean sign-count TCAV scores tie, and how many of them the graded
    scores tell apart."""
    m, g = np.asarray(means, float), np.asarray(magnitudes, float)
    i, j = np.triu_indices(len(m), 1)
    tied = np.isclose(m[i], m[j], rtol=0, atol=1e-12)
    return {"tied_pairs": int(tied.sum()), "broken_by_magnitude": int((tied & ~np.isclose(g[i], g[j], rtol=0,
                                                                                          atol=1e-9)).sum())}


def rescore(scored: Sequence[ConceptScores], baseline: ConceptScores,
            gradients: np.ndarray) -> tuple[list[ConceptScores], ConceptScores]:
    """The same CAVs scored on other gradients (the model-randomisation check)."""
    base = ConceptScores(scores=tcav_scores(gradients, baseline.directions), cav_accuracies=baseline.cav_accuracies,
                         p_value=float("nan"), directions=baseline.directions)
    out = []
    for s in scored:
        new = tcav_scores(gradients, s.directions)
        out.append(ConceptScores(scores=new, cav_accuracies=s.cav_accuracies, p_value=significance(new, base.scores),
                                 directions=s.directions))
    return out, base


def random_baseline(random: RandomSets[np.ndarray], gradients: np.ndarray, *, seed: int, model: str,
                    alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the random-vs-random CAVs: the baseline set against each random set.
    Returns (scores [N], CAV accuracies [N])."""
    _, baseline = score_concepts([], random, gradients, seed=seed, model=model, alpha=alpha)
    return baseline.scores, baseline.cav_accuracies


def score_concept(concept: np.ndarray, random_sets: Sequence[np.ndarray], gradients: np.ndarray,
                  baseline_scores: np.ndarray, *, seed: int, model: str, alpha: float) -> ConceptScores:
    """A concept's CAV against each random set, its TCAV scores, and the p-value against the
    random baseline's scores (paired by random set)."""
    n = len(random_sets)
    directions, accuracies = fit_cavs([concept] * n, list(random_sets), [seed + i for i in range(n)], model=model,
                                      alpha=alpha)
    scores = tcav_scores(gradients, directions)
    return ConceptScores(scores=scores, cav_accuracies=np.asarray(accuracies),
                         p_value=significance(scores, baseline_scores), directions=directions)


def rank_change(before: Sequence[float], after: Sequence[float]) -> dict[str, float]:
    """How much a concept ranking moved: Spearman's rank correlation between the mean TCAV
    scores before and after (nan when either is constant or there are fewer than 2 concepts)
    and the mean absolute change of the scores."""
    from scipy.stats import spearmanr

    b, a = np.asarray(before, float), np.asarray(after, float)
    rho = float("nan")
    if len(b) >= 2 and np.ptp(b) > 0 and np.ptp(a) > 0:
        rho = float(spearmanr(b, a).statistic)
    return {"spearman": rho, "mean_abs_change": float(np.abs(a - b).mean()) if len(b) else float("nan")}
