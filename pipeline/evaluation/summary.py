"""The evaluation's science as pure functions: whether the model recognises a class, causal
concept importance from the one-concept-removed clips, the curves' plans, and per (class,
layer) the curve points, their areas and the summary figures (metrics/evaluate.parquet).

`outcomes[video][layer][plan] = (class probability, correct)`: what the model actors measured.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Optional, Sequence

import numpy as np

from pipeline.evaluation.deletion import (DELETE, INSERT, EvaluateParams, MaskingParams, Plan, auc, curve_plans,
                                          orderings)

log = logging.getLogger("pipeline")

Key = tuple[str, str]  # (class, layer)
Curve = tuple[str, str, str, list[Plan]]  # (ranking, order, mode, plans)
Outcomes = dict[str, dict[Plan, tuple[float, bool]]]  # one layer's: video -> plan -> (probability, correct)


def class_recognition(correct: Sequence[bool], num_classes: int, alpha: float = 0.05) -> tuple[float, float, bool]:
    """(accuracy, chance, recognised) of a class's scoring videos: recognised when the accuracy
    is above chance (1 / classes) by a one-sided binomial test at `alpha`."""
    from scipy.stats import binomtest

    chance = 1.0 / num_classes
    if not len(correct):
        return float("nan"), chance, False
    hits = int(np.sum(correct))
    recognised = binomtest(hits, len(correct), chance, alternative="greater").pvalue <= alpha
    return float(np.mean(correct)), chance, bool(recognised)


def single_concept_plans(names: Sequence[str]) -> list[Plan]:
    """The clip as it is, then with each concept removed in turn (causal importance)."""
    return [Plan(DELETE, frozenset())] + [Plan(DELETE, frozenset([cn])) for cn in names]


def masking_plans(target_class: str, layer: str, names: Sequence[str], params: MaskingParams, seed: int) -> list[Plan]:
    """The random concept subsets removed at once from each scoring video of (k, layer)
    (seeded by the class and layer, so a rerun and the summarising task draw the same)."""
    if not params.masks or not names:
        return []
    digest = int(hashlib.sha256(f"{target_class}\0{layer}".encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng([seed, digest])
    return [Plan(DELETE, frozenset(n for n, r in zip(names, rng.random(len(names))) if r < params.ratio))
            for _ in range(params.masks)]


def masking_importance(names: Sequence[str], masks: Sequence[Plan],
                       outcomes: Outcomes) -> dict[str, Optional[float]]:
    """Per concept of one (class, layer): the coefficient of keeping it in a least-squares fit
    of the class probability on the mask matrix, `p(video, mask) = b0 + sum_c b_c keep_c(mask)`:
    the mean probability with it kept minus with it removed, adjusted for the other concepts
    (the masks are few and shared by a class's videos, so a plain difference of means would
    credit a concept for the others it happens to be drawn with). None for all when there are
    no more masks than concepts. `outcomes[video][plan]`: the class's scoring videos there."""
    if not masks or not outcomes:
        return {}
    if len(masks) <= len(names):
        return {cn: None for cn in names}
    prob = np.array([[measured[m][0] for m in masks] for measured in outcomes.values()]).mean(0)  # [M]
    keep = np.array([[cn not in m.concepts for cn in names] for m in masks], dtype=np.float64)  # [M, C]
    design = np.column_stack([np.ones(len(masks)), keep])
    coef = np.linalg.lstsq(design, prob, rcond=None)[0][1:]
    varies = keep.min(0) != keep.max(0)
    return {cn: float(b) if v else None for cn, b, v in zip(names, coef, varies)}


def masking_summary(names: Sequence[str], masking: dict[str, Optional[float]], tcav_mean: dict[str, float],
                    causal: dict[str, float], masks: Sequence[Plan], videos: int) -> dict[str, Any]:
    """The masking figures of one (class, layer): the Spearman correlation of masking
    importance with the TCAV scores and with single-removal importance, and its cost in forward
    windows (the masks not already run for single removal, times the videos)."""
    from scipy.stats import spearmanr

    have = [cn for cn in names if masking.get(cn) is not None]
    m = [masking[cn] for cn in have]

    def rho(other: Sequence[float]) -> Optional[float]:
        if len(have) < 2 or np.ptp(m) == 0 or np.ptp(other) == 0:
            return None
        return round(float(spearmanr(m, other).statistic), 4)

    single = set(single_concept_plans(names))
    return {"masking_spearman_tcav": rho([tcav_mean[cn] for cn in have]),
            "masking_spearman_causal": rho([causal.get(cn, 0.0) for cn in have]),
            "masking_masks": len(masks), "masking_windows": len(set(masks) - single) * videos}


def causal_importance(ranked: dict[Key, list[str]], outcomes: dict[str, dict[str, dict[Plan, tuple[float, bool]]]],
                      class_of: dict[str, str]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Per concept, the mean drop in class probability when its voxels are removed from its
    class's scoring videos, and per concept the videos' correctness with it removed."""
    drops: dict[str, list[float]] = {}
    correct_without: dict[str, list[float]] = {}
    for vid, by_layer in outcomes.items():
        for layer, measured in by_layer.items():
            base = measured[Plan(DELETE, frozenset())][0]
            for cn in ranked[(class_of[vid], layer)]:
                p, ok = measured[Plan(DELETE, frozenset([cn]))]
                drops.setdefault(cn, []).append(base - p)
                correct_without.setdefault(cn, []).append(float(ok))
    return {cn: float(np.mean(v)) for cn, v in drops.items()}, correct_without


def by_importance(names: Sequence[str], causal: dict[str, float]) -> list[str]:
    """The concepts, most causally important first (ties in rank order)."""
    return sorted(names, key=lambda cn: (-causal.get(cn, 0.0), list(names).index(cn)))


def curves(ranked: dict[Key, list[str]], causal: dict[str, float], params: EvaluateParams,
           crossfit: Optional[dict[int, dict[str, float]]] = None) -> dict[Key, list[Curve]]:
    """Every curve of every (class, layer): concepts in TCAV order (the paper's) and in causal
    order, top / bottom / random orders, deletion and insertion, k = 0 .. max_k. `crossfit`:
    causal importance measured on each half of the scoring videos (`halves`); each adds the
    top and bottom curves of its order (`causal_from<h>`, measured on the other half)."""
    out: dict[Key, list[Curve]] = {}
    for kl, names in ranked.items():
        for ranking, order_base in (("tcav", names), ("causal", by_importance(names, causal))):
            for order, ordered in orderings(order_base, params.random_draws, params.seed).items():
                for mode in (DELETE, INSERT):
                    out.setdefault(kl, []).append((ranking, order, mode, curve_plans(ordered[:params.max_k], mode)))
        for h, half_causal in (crossfit or {}).items():
            ordered = by_importance(names, half_causal)
            for order, seq in (("top", ordered), ("bottom", ordered[::-1])):
                for mode in (DELETE, INSERT):
                    out[kl].append((f"causal_from{h}", order, mode, curve_plans(seq[:params.max_k], mode)))
    return out


def halves(video_ids: Sequence[str], seed: int) -> list[list[str]]:
    """A class's scoring videos in two seeded halves (sorted ids), for cross-fitting; none when
    there are fewer than 4."""
    vids = sorted(video_ids)
    if len(vids) < 4:
        return []
    order = np.random.default_rng([seed, 7]).permutation(len(vids))
    return [sorted(vids[i] for i in order[: len(vids) // 2]), sorted(vids[i] for i in order[len(vids) // 2:])]


def deletion_gap(top: np.ndarray, bottom: np.ndarray, seed: int, resamples: int = 2000) -> dict[str, Any]:
    """The paired gap of the deletion areas, top-first minus bottom-first order, over videos:
    `top`, `bottom` [videos] each video's own area. Its mean, a 95% percentile interval from
    `resamples` seeded bootstrap draws of the videos, and the share of videos whose top-first
    area lies below their bottom-first one (ties count half). Negative: the top-first order
    takes the class away sooner."""
    d = np.asarray(top, dtype=float) - np.asarray(bottom, dtype=float)
    draws = np.random.default_rng([seed, 11]).integers(0, len(d), size=(resamples, len(d)))
    lo, hi = np.percentile(d[draws].mean(1), [2.5, 97.5])
    return {"gap": round(float(d.mean()), 4), "ci": [round(float(lo), 4), round(float(hi), 4)],
            "videos_top_below": round(float(np.mean((d < 0) + 0.5 * (d == 0))), 4)}


def crossfit_summary(target_class: str, layer: str, curve_list: list[Curve], outcomes: Outcomes, names: list[str],
                     split: list[list[str]], seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The cross-fitted causal figures of one (class, layer): each half's curves in the order
    of the causal importance measured on the other half, the two halves' figures averaged.
    Rows of ranking `causal_crossfit` for evaluation/ and the figures `crossfit_causal_*`:
    the areas under the accuracy curves (the paper's), under the mean class probability curves
    (`..._prob_auc_*`: the same clips without the argmax threshold, which with a few videos a
    class keeps while its probability falls), and the videos' paired deletion gap, top minus
    bottom (`deletion_gap`, seeded by `seed`), in both."""
    per_half: dict[tuple[str, str], list[np.ndarray]] = {}
    per_video: dict[str, list[np.ndarray]] = {}  # delete order -> each video's [accuracy, prob] area
    random_top1 = []
    for h, vids in enumerate(split):
        vids = [v for v in vids if v in outcomes]
        if not vids:
            return [], {}
        for ranking, order, mode, plans in curve_list:
            if ranking == f"causal_from{1 - h}":  # measured on half h, ordered by the other half
                video_curves = np.array([[[float(outcomes[v][p][i]) for p in plans] for i in (1, 0)]
                                         for v in vids])  # [videos, accuracy | prob, k]
                per_half.setdefault((mode, order), []).append(video_curves.mean(0))
                if mode == DELETE:  # auc is linear: the videos' areas average to the half's
                    per_video.setdefault(order, []).extend(np.apply_along_axis(auc, 2, video_curves))
        random_top1.append(np.mean([outcomes[v][Plan(DELETE, frozenset([cn]))][1] for v in vids for cn in names]))
    rows, areas, prob_areas, acc = [], {}, {}, {}
    for (mode, order), curves_ in per_half.items():
        if len(curves_) != 2:
            continue
        acc[(mode, order)], prob = np.mean(curves_, axis=0)  # the two halves' means, averaged
        areas[(mode, order)], prob_areas[(mode, order)] = auc(acc[(mode, order)]), auc(prob)
        base = {"target_class": target_class, "layer": layer, "ranking": "causal_crossfit", "mode": mode,
                "order": order, "n_videos": sum(len(v) for v in split)}
        rows += [{**base, "kind": "point", "k": kk, "accuracy": float(a), "mean_prob": float(p)}
                 for kk, (a, p) in enumerate(zip(acc[(mode, order)], prob))]
        rows.append({**base, "kind": "auc", "k": None, "accuracy": areas[(mode, order)],
                     "mean_prob": prob_areas[(mode, order)]})
    top = acc.get((DELETE, "top"))
    drop = None if top is None or len(top) < 2 else round(float(np.mean(random_top1)) - float(top[1]), 4)
    summary = {"crossfit_causal_top1_deletion_accuracy_drop_vs_random": drop,
               **{f"crossfit_causal_{mode_name}_{what}auc_{order}": table.get((mode, order))
                  for mode, mode_name in ((DELETE, "deletion"), (INSERT, "insertion"))
                  for what, table in (("", areas), ("prob_", prob_areas)) for order in ("top", "bottom")}}
    if len(per_video.get("top", [])) == len(per_video.get("bottom", [])) > 0:
        t, b = np.array(per_video["top"]), np.array(per_video["bottom"])
        for i, what in enumerate(("", "prob_")):
            gap = deletion_gap(t[:, i], b[:, i], seed)
            summary.update({f"crossfit_causal_deletion_{what}auc_gap": gap["gap"],
                            f"crossfit_causal_deletion_{what}auc_gap_ci95": gap["ci"],
                            f"crossfit_causal_deletion_{what}auc_videos_top_below": gap["videos_top_below"]})
    return rows, summary


def summarise(target_class: str, layer: str, curve_list: list[Curve], outcomes: Outcomes, names: list[str],
              tcav_mean: dict[str, float], causal: dict[str, float],
              correct_without: dict[str, list[float]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """evaluation/ rows of one (class, layer) and its summary figures.
    `outcomes[video][plan]`: the class's scoring videos at this layer; `names`: its concepts in
    rank order."""
    from scipy.stats import spearmanr

    vids = list(outcomes)
    points: dict[tuple[str, str, str], list[tuple[list[float], list[float]]]] = {}
    for ranking, order, mode, plans in curve_list:
        name = "random" if order.startswith("random") else order
        acc = [float(np.mean([outcomes[v][p][1] for v in vids])) for p in plans]
        prob = [float(np.mean([outcomes[v][p][0] for v in vids])) for p in plans]
        points.setdefault((ranking, mode, name), []).append((acc, prob))
    rows: list[dict[str, Any]] = []
    accuracy: dict[tuple[str, str, str], np.ndarray] = {}  # (ranking, mode, order) -> accuracy at each k
    areas: dict[tuple[str, str, str], float] = {}
    prob_areas: dict[tuple[str, str, str], float] = {}  # under the mean class probability curves
    for (ranking, mode, order), draws in points.items():
        acc = np.mean([d[0] for d in draws], axis=0)
        prob = np.mean([d[1] for d in draws], axis=0)
        accuracy[(ranking, mode, order)], areas[(ranking, mode, order)] = acc, auc(acc)
        prob_areas[(ranking, mode, order)] = auc(prob)
        base = {"target_class": target_class, "layer": layer, "ranking": ranking, "mode": mode, "order": order,
                "n_videos": len(vids)}
        for kk, (a_, p_) in enumerate(zip(acc, prob)):
            rows.append({**base, "kind": "point", "k": kk, "accuracy": float(a_), "mean_prob": float(p_)})
        rows.append({**base, "kind": "auc", "k": None, "accuracy": areas[(ranking, mode, order)],
                     "mean_prob": prob_areas[(ranking, mode, order)]})
    tcav_means = [tcav_mean[cn] for cn in names]
    causal_values = [causal.get(cn, 0.0) for cn in names]
    rho = float("nan")
    if len(names) >= 2 and np.ptp(tcav_means) > 0 and np.ptp(causal_values) > 0:
        rho = float(spearmanr(tcav_means, causal_values).statistic)
    # "a random concept" at k = 1: the exact expectation, i.e. the mean accuracy over the
    # class's videos with each of its concepts removed in turn, not the draws
    removed = [correct_without[cn] for cn in names if cn in correct_without]
    random_top1 = float(np.mean(np.concatenate(removed)))
    # the most any ordering can get at k = 1 on these videos: the concept whose removal costs
    # the most accuracy (in-sample, so an upper bound, not a ranking to use)
    best_top1 = round(random_top1 - min(float(np.mean(v)) for v in removed), 4)

    def at_k1(ranking: str, order: str) -> Optional[float]:
        curve = accuracy.get((ranking, DELETE, order))
        return None if curve is None or len(curve) < 2 else float(curve[1])

    def top1_drop(ranking: str, baseline: Optional[float]) -> Optional[float]:
        top = at_k1(ranking, "top")
        return None if top is None or baseline is None else round(baseline - top, 4)

    # the model's answer for a wholly mean-filled clip (insertion at k = 0): a class it
    # predicts there can hardly lose accuracy when concepts are deleted
    empty = accuracy.get(("tcav", INSERT, "top"))
    empty_accuracy = None if empty is None else round(float(empty[0]), 4)
    if empty_accuracy is not None and empty_accuracy >= 0.5:
        log.warning("evaluate: %s/%s: the model predicts %r for %.0f%% of its wholly mean-filled scoring clips, so "
                    "deleting concepts can hardly take the class away: its deletion figures say little",
                    target_class, layer, target_class, 100 * empty_accuracy)
    summary = {
        "spearman_tcav_causal": rho, "videos": len(vids),
        "mean_filled_clip_accuracy": empty_accuracy,
        "random_top1_deletion_accuracy": round(random_top1, 4),
        "best_single_concept_top1_deletion_accuracy_drop_vs_random": best_top1,
        **{f"{ranking}_{what}": value for ranking in ("tcav", "causal") for what, value in (
            ("top1_deletion_accuracy_drop_vs_random", top1_drop(ranking, random_top1)),
            ("top1_deletion_accuracy_drop_vs_random_draws", top1_drop(ranking, at_k1(ranking, "random"))),
            ("deletion_auc_top", areas.get((ranking, DELETE, "top"))),
            ("deletion_auc_bottom", areas.get((ranking, DELETE, "bottom"))),
            ("deletion_prob_auc_top", prob_areas.get((ranking, DELETE, "top"))),
            ("deletion_prob_auc_bottom", prob_areas.get((ranking, DELETE, "bottom"))),
            ("insertion_auc_top", areas.get((ranking, INSERT, "top"))),
            ("insertion_auc_bottom", areas.get((ranking, INSERT, "bottom"))))},
    }
    return rows, summary
