"""CAV, TCAV and significance on vectors whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.scoring.tcav import (fit_cav, gradients_are_constant, holm, random_baseline, score_concept,
                                   significance, tcav_score)


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


def test_tcav_counts_positive_directional_derivatives():
    grads = np.array([[1.0, 0.0], [0.5, 1.0], [-1.0, 0.2], [-0.1, -3.0]])
    assert tcav_score(grads, np.array([1.0, 0.0])) == 0.5
    assert tcav_score(grads, np.array([0.0, 1.0])) == 0.5
    assert tcav_score(grads, np.array([0.6, 0.8])) == 0.5
    assert tcav_score(-grads, np.array([1.0, 0.0])) == 0.5


def test_a_concept_the_class_uses_is_significant_and_a_random_one_is_not():
    rng = np.random.default_rng(1)
    dim, n_sets = 24, 10
    axis = np.zeros(dim)
    axis[0] = 1.0
    grads = rng.normal(0, 0.3, (40, dim)) + axis  # the class logit grows along axis 0
    random_sets = [rng.normal(0, 1, (30, dim)) for _ in range(n_sets)]
    extra = rng.normal(0, 1, (30, dim))
    FIT = {"seed": 3, "model": "torch", "alpha": 0.01}  # the reference classifier, as the job fits it
    baseline, _ = random_baseline(random_sets, extra, grads, **FIT)
    assert 0.1 < baseline.mean() < 0.9  # random CAVs point anywhere
    used = score_concept(rng.normal(0, 1, (30, dim)) + 2 * axis, random_sets, grads, baseline, **FIT)
    unused = score_concept(rng.normal(0, 1, (30, dim)), random_sets, grads, baseline, **FIT)
    assert used.mean > 0.95 and used.p_value <= 0.01
    assert unused.p_value > 0.01
    assert used.cav_accuracies.mean() >= 0.7


def test_significance_edge_cases_and_holm():
    assert significance([1, 1, 1], [1, 1, 1]) == 1.0
    assert significance([1, 1, 1], [0, 0, 0]) == 0.0
    assert significance([0.9, 0.8, 1.0, 0.95], [0.5, 0.4, 0.6, 0.5]) < 0.01
    adj = holm([0.01, 0.04, 0.03, 0.2])
    assert adj.tolist() == pytest.approx([0.04, 0.09, 0.09, 0.2])


def test_constant_gradients_are_detected():
    g = np.tile(np.array([0.3, -0.2, 0.5]), (10, 1))
    assert gradients_are_constant(g)
    assert not gradients_are_constant(g + np.random.default_rng(0).normal(0, 0.1, g.shape))


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
