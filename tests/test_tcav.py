"""CAV, TCAV and significance on vectors whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.scoring.tcav import (RandomSets, fit_cav, fit_cavs, gradients_are_constant, holm, random_baseline,
                                   score_concept, score_concepts, significance, stratified_split, tcav_magnitudes,
                                   tcav_score, tcav_scores, ties_broken)


def test_cav_points_toward_the_concept_and_is_accurate():
    rng = np.random.default_rng(0)
    axis = np.zeros(32)
    axis[3] = 1.0
    concept = rng.normal(0, 1, (60, 32)) + 5 * axis
    random = rng.normal(0, 1, (60, 32))
    for model, least in (("sgd", 0.75), ("logistic", 0.9)):  # SGD's solution is a noisy one
        cav = fit_cav(concept, random, seed=1, model=model, alpha=0.01)
        assert cav.accuracy >= least
        assert np.isclose(np.linalg.norm(cav.direction), 1.0, atol=1e-5)
        assert cav.direction[3] > 0.7  # toward the concept, along the planted axis


def test_fastcav_is_the_concept_mean_minus_the_pair_mean():
    rng = np.random.default_rng(4)
    axis = np.zeros(16)
    axis[5] = 1.0
    concepts = [rng.normal(0, 1, (30, 16)) + 8 * axis, rng.normal(0, 1, (12, 16)) - 8 * axis]
    randoms = [rng.normal(0, 1, (40, 16)), rng.normal(0, 1, (40, 16))]
    directions, accuracies = fit_cavs(concepts, randoms, [7, 8], model="fastcav", alpha=0.01)
    for p, n, seed, v, acc in zip(concepts, randoms, [7, 8], directions, accuracies):
        (p_train, p_test), (n_train, n_test) = stratified_split(len(p), len(n), seed)
        assert len(p_test) == round(0.33 * len(p)) and len(n_test) == round(0.33 * len(n))
        assert not set(p_train) & set(p_test) and len(p_train) + len(p_test) == len(p)
        train = np.concatenate([p[p_train], n[n_train]])
        by_hand = p[p_train].mean(0) - train.mean(0)
        np.testing.assert_allclose(v, by_hand / np.linalg.norm(by_hand), atol=1e-6)
        middle = (p[p_train].mean(0) + n[n_train].mean(0)) / 2
        right = ((p[p_test] - middle) @ v > 0).sum() + ((n[n_test] - middle) @ v <= 0).sum()
        assert acc == right / (len(p_test) + len(n_test))
    assert directions[0][5] > 0.9 and directions[1][5] < -0.9  # toward each concept, along the planted axis
    assert accuracies.min() == 1.0  # planted 8 sigma apart: the hold-out is separated


def test_tcav_counts_positive_directional_derivatives():
    grads = np.array([[1.0, 0.0], [0.5, 1.0], [-1.0, 0.2], [-0.1, -3.0]])
    assert tcav_score(grads, np.array([1.0, 0.0])) == 0.5
    assert tcav_score(grads, np.array([0.0, 1.0])) == 0.5
    assert tcav_score(grads, np.array([0.6, 0.8])) == 0.5
    assert tcav_score(-grads, np.array([1.0, 0.0])) == 0.5


def test_graded_tcav_is_the_positive_share_of_the_derivative_mass_and_breaks_sign_count_ties():
    grads = np.eye(4)  # video i's gradient is axis i: the directional derivatives are the CAV's coordinates
    a, b = np.array([5.0, -1.0, 1.0, -1.0]), np.array([1.0, -5.0, 1.0, -1.0])
    directions = np.stack([a, b, -a, np.zeros(4)])
    assert tcav_scores(grads, directions).tolist() == [0.5, 0.5, 0.5, 0.0]  # the sign count ties a and b
    assert np.allclose(tcav_magnitudes(grads, directions), [6 / 8, 2 / 8, 2 / 8, 0.0])  # by hand
    assert ties_broken([0.5, 0.5, 0.5], [0.75, 0.25, 0.25]) == {"tied_pairs": 3, "broken_by_magnitude": 2}


def _planted(seed: int, dim: int, noise: float, n_sets: int = 10):
    """Gradients along axis 0 (the class logit grows along it) with noise, random sets, and a
    concept along that axis (used) and one not (unused)."""
    rng = np.random.default_rng(seed)
    axis = np.zeros(dim)
    axis[0] = 1.0
    grads = rng.normal(0, noise, (40, dim)) + axis
    random_sets = [rng.normal(0, 1, (30, dim)) for _ in range(n_sets)]
    extra = rng.normal(0, 1, (30, dim))
    return grads, RandomSets(random_sets, extra), rng.normal(0, 1, (30, dim)) + 2 * axis, rng.normal(0, 1, (30, dim))


def test_graded_tcav_of_a_used_concept_is_significant_and_of_an_unused_one_is_not():
    grads, random, used, unused = _planted(2, 16, 0.5)
    (u, n), base = score_concepts([used, unused], random, grads, seed=1, model="fastcav", alpha=0.01)
    assert u.magnitudes.mean() > 0.9 and u.magnitude_p_value <= 0.01
    assert n.magnitude_p_value > 0.01 and 0.1 < base.magnitudes.mean() < 0.9
    assert np.allclose(u.magnitudes, tcav_magnitudes(grads, u.directions))


def test_a_concept_the_class_uses_is_significant_and_a_random_one_is_not():
    grads, random, used_vectors, unused_vectors = _planted(1, 24, 0.3)
    for model in ("torch", "fastcav"):  # the reference classifier, as the job fits it; the closed form
        FIT = {"seed": 3, "model": model, "alpha": 0.01}
        baseline, _ = random_baseline(random, grads, **FIT)
        assert 0.1 < baseline.mean() < 0.9  # random CAVs point anywhere
        used = score_concept(used_vectors, random.sets, grads, baseline, **FIT)
        unused = score_concept(unused_vectors, random.sets, grads, baseline, **FIT)
        assert used.mean > 0.95 and used.p_value <= 0.01, model
        assert unused.p_value > 0.01, model
        assert used.cav_accuracies.mean() >= 0.7, model


def test_significance_edge_cases_and_holm():
    assert significance([1, 1, 1], [1, 1, 1]) == 1.0
    assert significance([1, 1, 1], [0, 0, 0]) == 0.0
    assert significance([0.9, 0.8, 1.0, 0.95], [0.5, 0.4, 0.6, 0.5]) < 0.01
    adj = holm([0.01, 0.04, 0.03, 0.2])
    assert adj.tolist() == pytest.approx([0.04, 0.09, 0.09, 0.2])


def test_constant_gradients_are_detected():
    g = np.tile(np.array([0.3, -0.2, 0.5]), (10, 1))
    assert gradients_are_constant(g)
    noise = np.random.default_rng(0).normal(0, 1, g.shape)
    assert gradients_are_constant(g * (1 + 1e-3 * noise))  # bf16 rounding of a constant gradient
    assert not gradients_are_constant(g + 0.1 * noise)


def test_batched_trainer_is_sklearns_sgd_step_for_step():
    """Without shuffling (the one thing drawn from a different generator) the batched torch
    trainer gives sklearn's SGDClassifier coefficients and epoch count, pair by pair."""
    from sklearn.linear_model import SGDClassifier

    from pipeline.scoring.cav_batch import fit_cavs_batched

    rng = np.random.default_rng(5)
    sizes = [(30, 40), (12, 40), (25, 25), (40, 18)]  # uneven pairs share one padded batch
    pos = [rng.normal(0, 1, (m, 16)) + rng.normal(0, 1, 16) for m, _ in sizes]
    neg = [rng.normal(0, 1, (n, 16)) for _, n in sizes]
    _, acc, w, b, splits, epochs = fit_cavs_batched(pos, neg, [0, 1, 2, 3], alpha=0.01, shuffle=False,
                                                    return_model=True)
    for i, (p, n) in enumerate(zip(pos, neg)):
        x, y = np.concatenate([p, n]), np.r_[np.ones(len(p)), np.zeros(len(n))]
        train, test = splits[i]
        clf = SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3, shuffle=False).fit(x[train], y[train])
        np.testing.assert_allclose(w[i], clf.coef_[0], rtol=1e-9, atol=1e-9)
        assert b[i] == pytest.approx(clf.intercept_[0], abs=1e-9)
        assert epochs[i] == clf.n_iter_
        assert acc[i] == (clf.predict(x[test]) == y[test]).mean()
