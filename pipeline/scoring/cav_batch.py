"""Every CAV of a class at once: the reference classifier's own algorithm, run for all
(concept x random set) pairs together in torch.

The reference fits `SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3)` once per pair. That
is plain SGD on hinge loss + `alpha/2 |w|^2` with sklearn's "optimal" step size
`1 / (alpha (t0 + t))`, a fresh shuffle every epoch, and a stop when an epoch's summed loss
has not fallen by `tol * n` for 5 epochs. This module runs that same algorithm, step for step,
vectorised over the pairs: each step takes the next sample of every pair at once, and a pair
that has stopped (or has no sample left in this epoch) is masked out. The stop follows the
installed sklearn (1.8 and later sum the objective, loss plus penalty, over the epoch; earlier
releases summed the loss alone). With `shuffle=False` it reproduces sklearn's coefficients and
epoch count exactly (a test checks it). Only the shuffles differ
(sklearn draws them from its own generator), so the answers agree with sklearn's as closely
as sklearn's answers under two seeds agree with each other; a test checks that on real
activations.

Why not minimise the objective exactly? Tried: full-batch Adam reaches a lower objective than
SGD on every pair, but the exact minimiser of this weakly regularised hinge loss fits the
training split harder, and its CAVs scored lower hold-out accuracy on a planted-concept test
than SGD's early-stopped ones. The reference's answer is SGD's, so this is SGD.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np


@lru_cache(maxsize=4096)
def split_pair(n_pos: int, n_neg: int, seed: int, test_size: float = 0.33) -> tuple[np.ndarray, np.ndarray]:
    """The reference's 33% stratified hold-out (sklearn's `train_test_split` with the same
    seed): (train indices, test indices) into `concat(positives, negatives)`, read-only. Kept
    for reuse: a class's CAVs repeat a few (sizes, seed) keys, and sklearn's draw takes about a
    millisecond, longer than a closed-form CAV."""
    from sklearn.model_selection import train_test_split

    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    train, test = (np.asarray(a) for a in train_test_split(np.arange(len(y)), test_size=test_size, stratify=y,
                                                           random_state=seed))
    train.flags.writeable = test.flags.writeable = False
    return train, test


def fit_cavs_batched(positives: Sequence[np.ndarray], negatives: Sequence[np.ndarray], seeds: Sequence[int],
                     *, alpha: float, test_size: float = 0.33, max_iter: int = 1000, tol: float = 1e-3,
                     n_iter_no_change: int = 5, shuffle: bool = True, t0: float | None = None, device: str = "cpu",
                     return_model: bool = False):
    """CAVs of P pairs: pair p separates positives[p] (the concept, label +1) from negatives[p]
    (a random set, label -1), trained on the reference split made with seeds[p] (which also
    seeds the shuffles).

    Returns (directions float32 [P, C], unit normals toward the concept; hold-out accuracies
    float64 [P]), plus (weights [P, C], intercepts [P], splits, epochs run [P]) with
    `return_model`.
    """
    import torch

    num = len(positives)
    if num == 0:
        return np.zeros((0, 0), np.float32), np.zeros(0)
    dim = positives[0].shape[1]
    splits = [split_pair(len(p), len(n), s, test_size) for p, n, s in zip(positives, negatives, seeds)]
    width = max(len(tr) for tr, _ in splits)
    x = np.zeros((num, width, dim), np.float64)
    y = np.zeros((num, width), np.float64)
    for i, (p, n, (train, _)) in enumerate(zip(positives, negatives, splits)):
        x[i, :len(train)] = np.concatenate([p, n])[train]
        y[i, :len(train)] = np.r_[np.ones(len(p)), -np.ones(len(n))][train]
    counts = torch.tensor([len(tr) for tr, _ in splits], device=device)
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    gen = torch.Generator(device=device).manual_seed(int(seeds[0]) if len(seeds) else 0)

    w = torch.zeros((num, dim), dtype=torch.float64, device=device)
    b = torch.zeros(num, dtype=torch.float64, device=device)
    # sklearn's "optimal" schedule: eta = 1 / (alpha (t0 + t - 1)), t0 such that the first
    # step is typw = alpha^-1/4 (hinge's derivative at -typw has magnitude 1).
    if t0 is None:
        t0 = 1.0 / (alpha ** -0.25 * alpha)
    t = torch.ones(num, dtype=torch.float64, device=device)
    best = torch.full((num,), float("inf"), dtype=torch.float64, device=device)
    stale = torch.zeros(num, dtype=torch.int64, device=device)
    running = torch.ones(num, dtype=torch.bool, device=device)
    epochs = torch.zeros(num, dtype=torch.int64, device=device)
    positions = torch.arange(width, device=device)
    for _ in range(max_iter):
        live = torch.nonzero(running).flatten()  # pairs still training: the batch shrinks as they stop
        if len(live) == 0:
            break
        n_live = counts[live]
        # A fresh shuffle of each pair's own samples (padding sorts last), gathered once per epoch.
        keys = (torch.rand((len(live), width), generator=gen, device=device, dtype=torch.float64) if shuffle
                else positions[None, :].double().expand(len(live), -1) / width)
        order = torch.argsort(keys.masked_fill(positions[None, :] >= n_live[:, None], 2.0), dim=1)
        xs, ys = xt[live[:, None], order], yt[live[:, None], order]  # [L, width, C], [L, width]
        wl, bl, tl = w[live], b[live], t[live]
        objective = torch.zeros(len(live), dtype=torch.float64, device=device)
        for i in range(width):
            active = i < n_live
            xi, yi = xs[:, i], ys[:, i]
            z = yi * ((wl * xi).sum(1) + bl)
            eta = 1.0 / (alpha * (t0 + tl - 1.0))
            # the epoch's objective as sklearn (>= 1.8) sums it: loss + penalty before the step
            objective += torch.where(active, torch.clamp(1.0 - z, min=0.0) + 0.5 * alpha * (wl * wl).sum(1), 0.0)
            update = torch.where(active & (z <= 1.0), eta * yi, 0.0)  # -eta * dloss; dloss = -y inside the margin
            wl.mul_(torch.where(active, torch.clamp(1.0 - eta * alpha, min=0.0), 1.0)[:, None])
            wl.addcmul_(update[:, None], xi)
            bl.add_(update)
            tl.add_(active.double())
        w[live], b[live], t[live] = wl, bl, tl
        epochs[live] += 1
        worse = objective > best[live] - tol * n_live
        stale[live] = torch.where(worse, stale[live] + 1, 0)
        best[live] = torch.minimum(best[live], objective)
        running[live] = stale[live] < n_iter_no_change

    weights, intercepts = w.cpu().numpy(), b.cpu().numpy()
    accuracies = np.zeros(num)
    for i, (p, n, (_, test)) in enumerate(zip(positives, negatives, splits)):
        xs = np.concatenate([p, n]).astype(np.float64)
        ys = np.r_[np.ones(len(p)), np.zeros(len(n))]
        predicted = (xs[test] @ weights[i] + intercepts[i]) > 0  # sklearn's predict: decision > 0 -> class 1
        accuracies[i] = float((predicted == ys[test]).mean())
    directions = (weights / np.maximum(np.linalg.norm(weights, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    if return_model:
        return directions, accuracies, weights, intercepts, splits, epochs.cpu().numpy()
    return directions, accuracies
