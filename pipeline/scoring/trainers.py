"""The CAV trainers: what fits a concept activation vector. A trainer takes many (concept,
random set) pairs at once, each as two sets of vectors and a seed, and returns a unit direction
per pair (toward the concept) and its hold-out accuracy. The four built-in ones implement it;
a user's own (any object with a `name` and this `fit`) is handed to `pipeline.explain(...,
cav_trainer=...)` and runs in the concepts stage's Ray tasks (so it must pickle: a class
defined in a notebook or a function travels by value). Its `name` and a digest of it pickled stand
for it in the run's config (`concepts.cav_model=user:<name>@<digest>`) and so in the concepts
stage's fingerprint: a rerun with another trainer, or the same with other settings, fits the
CAVs again.

    class MeanDifference:
        name = "mean-difference"

        def fit(self, positives, negatives, seeds):
            d = np.stack([p.mean(0) - n.mean(0) for p, n in zip(positives, negatives)])
            return d / np.linalg.norm(d, axis=1, keepdims=True), np.full(len(d), np.nan)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from pipeline.concepts.params import USER  # concepts.cav_model of a user's trainer: "user:<name>"


@dataclass
class CAV:
    direction: np.ndarray  # unit vector [C], toward the concept
    accuracy: float  # hold-out accuracy of the classifier


def fit_cav(concept: np.ndarray, random: np.ndarray, *, seed: int, alpha: float, model: str = "sgd",
            test_size: float = 0.33) -> CAV:
    """The reference CAV: `SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3)` (or logistic
    regression) on the concept's vectors (label 1) against the random set's (label 0), with a
    33% stratified hold-out for its accuracy."""
    from sklearn.linear_model import LogisticRegression, SGDClassifier

    from pipeline.scoring.cav_batch import split_pair

    x = np.concatenate([concept, random]).astype(np.float64)
    y = np.r_[np.ones(len(concept)), np.zeros(len(random))]
    train, test = split_pair(len(concept), len(random), seed, test_size)  # the same split as the batched trainer
    x_train, x_test, y_train, y_test = x[train], x[test], y[train], y[test]
    if model == "sgd":
        clf = SGDClassifier(alpha=alpha, max_iter=1000, tol=1e-3, random_state=seed)
    elif model == "logistic":
        clf = LogisticRegression(max_iter=1000)
    else:
        raise ValueError(f"CAV model must be 'sgd' or 'logistic', got {model!r}")
    clf.fit(x_train, y_train)
    accuracy = float((clf.predict(x_test) == y_test).mean())
    w = clf.coef_[0]
    return CAV(direction=(w / max(np.linalg.norm(w), 1e-12)).astype(np.float32), accuracy=accuracy)


def fit_cavs_fast(positives: Sequence[np.ndarray], negatives: Sequence[np.ndarray], seeds: Sequence[int],
                  test_size: float = 0.33) -> tuple[np.ndarray, np.ndarray]:
    """FastCAV (Schmalwasser et al., arXiv 2505.17883): the CAV in closed form, the mean of the
    concept's training vectors minus the mean of all training vectors of the pair (concept and
    random set together), normalised. No iterations: one pass over the vectors.

    Each pair is split 67/33 within each side (`stratified_split`, seeded like the trained
    CAVs, though not sklearn's draw: that alone costs more than this fit). The hold-out
    accuracy is that of the classifier the direction defines, sign((x - m) . v), m the midpoint
    of the two training means (the threshold of equal priors: the pair's own mean leans toward
    the larger side). Returns (directions float32 [P, C], accuracies [P])."""
    if not len(positives):
        return np.zeros((0, 0), np.float32), np.zeros(0)
    directions, accuracies = [], []
    for p, n, seed in zip(positives, negatives, seeds):
        (p_train, p_test), (n_train, n_test) = stratified_split(len(p), len(n), seed, test_size)
        mean_p, mean_n = p[p_train].mean(0, dtype=np.float64), n[n_train].mean(0, dtype=np.float64)
        v = mean_p - (len(p_train) * mean_p + len(n_train) * mean_n) / (len(p_train) + len(n_train))
        v /= max(np.linalg.norm(v), 1e-12)
        middle = (mean_p + mean_n) / 2
        right = ((p[p_test] - middle) @ v > 0).sum() + ((n[n_test] - middle) @ v <= 0).sum()
        directions.append(v.astype(np.float32))
        accuracies.append(float(right / max(1, len(p_test) + len(n_test))))
    return np.stack(directions), np.asarray(accuracies)


def stratified_split(n_pos: int, n_neg: int, seed: int,
                     test_size: float = 0.33) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A seeded hold-out of `test_size` of each side (at least one row each where a side has
    two or more): ((positive train, test), (negative train, test)) row indices."""
    rng = np.random.default_rng(seed)
    out = []
    for n in (n_pos, n_neg):
        order = rng.permutation(n)
        k = min(n - 1, max(1, int(round(test_size * n)))) if n >= 2 else 0
        out.append((order[k:], order[:k]))
    return out[0], out[1]


@runtime_checkable
class CavTrainer(Protocol):
    """Fits the CAVs of many pairs at once: `positives[i]` (the concept's vectors [n_i, C])
    against `negatives[i]` (a random set's [m_i, C]) with `seeds[i]`. Returns (directions
    float32 [P, C], unit, toward the concept; hold-out accuracies [P]). `name` goes into the
    run's config (`concepts.cav_model`), its fingerprint and `tcav_scores/`'s `trainer`."""

    name: str

    def fit(self, positives: Sequence[np.ndarray], negatives: Sequence[np.ndarray],
            seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class BatchedSGD:
    """The reference SGDClassifier's algorithm (hinge loss, L2 `alpha`), every pair at once in
    torch (`pipeline.scoring.cav_batch`): the default."""

    alpha: float = 0.01
    name: str = "torch"

    def fit(self, positives: Sequence[np.ndarray], negatives: Sequence[np.ndarray],
            seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        from pipeline.scoring.cav_batch import fit_cavs_batched

        return fit_cavs_batched(positives, negatives, seeds, alpha=self.alpha)


@dataclass(frozen=True)
class Sklearn:
    """One sklearn classifier per pair: `sgd` (SGDClassifier, L2 `alpha`) or `logistic`."""

    name: str = "sgd"
    alpha: float = 0.01

    def fit(self, positives: Sequence[np.ndarray], negatives: Sequence[np.ndarray],
            seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        cavs = [fit_cav(p, n, seed=s, model=self.name, alpha=self.alpha)
                for p, n, s in zip(positives, negatives, seeds)]
        if not cavs:
            return np.zeros((0, 0), np.float32), np.zeros(0)
        return np.stack([c.direction for c in cavs]), np.array([c.accuracy for c in cavs])


@dataclass(frozen=True)
class FastCAV:
    """The closed form (`pipeline.scoring.tcav.fit_cavs_fast`): no training."""

    name: str = "fastcav"

    def fit(self, positives: Sequence[np.ndarray], negatives: Sequence[np.ndarray],
            seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        return fit_cavs_fast(positives, negatives, seeds)


def builtin(name: str, alpha: float) -> CavTrainer:
    """The built-in trainer `concepts.cav_model` names."""
    if name == "torch":
        return BatchedSGD(alpha)
    if name == "fastcav":
        return FastCAV()
    if name in ("sgd", "logistic"):
        return Sklearn(name, alpha)
    raise ValueError(f"no built-in CAV trainer {name!r}: torch, fastcav, sgd or logistic "
                     f"({USER}<name> is a trainer handed over from Python)")


def checked(trainer: object) -> CavTrainer:
    """`trainer` when it is one (a `name` string and a `fit`), else a TypeError saying what is
    missing."""
    if not isinstance(trainer, CavTrainer) or not isinstance(getattr(trainer, "name", None), str):
        raise TypeError(f"cav_trainer = {trainer!r}: needs a `name` (str) and "
                        "`fit(positives, negatives, seeds) -> (directions, accuracies)`")
    return trainer
