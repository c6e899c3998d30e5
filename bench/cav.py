"""CAV trainers side by side on a finished run's own concepts: FastCAV's closed form
(`concepts.cav_model=fastcav`) against the batched SGD trainer (`torch`, the default) and
scikit-learn's SGDClassifier (`sgd`), in one process.

    .venv/bin/python bench/cav.py [--run outputs/synthetic-demo] [--layer layer2] [--scale 100]

For each class of the run at the layer: its concepts' members (concept_members/), their
vectors (activations/), the class's scoring videos' gradients and the random sets drawn as the
concepts stage draws them (same seed, same pool). Every trainer fits the same CAVs (each
concept and the random baseline against each random set); the TCAV scores, p-values and
significance decisions (p <= concepts.p_threshold) are compared with the default trainer's.
Then the same with `--scale` times as many random sets (that many times the CAVs), timing
only the fits (sklearn's loop on a tenth of them, scaled up).

The last line is `fastcav_speedup_vs_torch=<x> fastcav_speedup_vs_sklearn=<x>
fastcav_significance_agreement=<share of the run's concepts with the same decision as torch>`
(the speed-ups at the scaled case). Run `make demo` first for the default run folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pipeline.concepts.explain import split_videos  # noqa: E402
from pipeline.concepts.params import ConceptParams  # noqa: E402
from pipeline.params import from_section  # noqa: E402
from pipeline.scoring.tcav import draw_random_sets, fit_cavs, score_concepts  # noqa: E402

TRAINERS = ("torch", "fastcav", "sgd")


def class_inputs(run: str, layer: str, params: ConceptParams) -> dict[str, dict]:
    """Per class: concept member vectors, random sets (with the baseline set), scoring gradients."""
    import pandas as pd

    from pipeline.run_folder import partition

    pred = pd.read_parquet(os.path.join(run, "predictions")).sort_values("video_id")
    clips = pd.read_parquet(os.path.join(run, "clip_activations", partition(layer=layer)))
    clips = clips.sort_values("video_id").reset_index(drop=True)
    pool_vectors = {v: np.asarray(x, np.float32) for v, x in zip(clips.video_id, clips.vector)}
    out = {}
    for k in sorted(pred.label[pred.label_index >= 0].unique()):
        mine = pred[pred.label == k]
        _, scoring = split_videos(mine.video_id.tolist(), params.discovery_fraction, params.seed)
        pool = np.asarray(pred.video_id[pred.label != k].tolist(), dtype=object)
        sets = draw_random_sets(pool, params.num_random_exp, params.random_set_size, params.seed).map(
            lambda i: np.stack([pool_vectors[v] for v in pool[i]]))
        own = clips[(clips.video_id.isin(scoring)) & clips.gradient.notna()]
        gradients = np.stack([np.asarray(g, np.float32) for g in own.gradient])
        sv = pd.read_parquet(os.path.join(run, "activations", partition(layer=layer, target_class=k)))
        vec = {(v, s): np.asarray(x, np.float32) for v, s, x in zip(sv.video_id, sv.supervoxel_id, sv.vector)}
        members = pd.read_parquet(os.path.join(run, "concept_members", partition(target_class=k, layer=layer)))
        concepts = [np.stack([vec[(v, s)] for v, s in zip(g.video_id, g.supervoxel_id)])
                    for _, g in members.groupby("concept", sort=True)]
        out[k] = {"concepts": concepts, "random": sets, "gradients": gradients,
                  "names": sorted(members.concept.unique())}
    return out


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=os.path.join(ROOT, "outputs", "synthetic-demo"))
    ap.add_argument("--layer", default="layer2")
    ap.add_argument("--scale", type=int, default=100)
    a = ap.parse_args()
    if not os.path.exists(os.path.join(a.run, "concepts.parquet")):
        sys.exit(f"{a.run} is not a finished run (no concepts.parquet): run `make demo` first, or pass --run")
    c = json.load(open(os.path.join(a.run, "run.json")))["config"]
    params = from_section(ConceptParams, c["concepts"])
    inputs = class_inputs(a.run, a.layer, params)
    fit_cavs([np.zeros((4, 2))], [np.ones((4, 2))], [0], model="torch", alpha=params.cav_alpha)  # warm torch

    print(f"run {a.run}, layer {a.layer}: {len(inputs)} classes, "
          f"{sum(len(x['concepts']) for x in inputs.values())} concepts, {params.num_random_exp} random sets")
    seconds = {t: 0.0 for t in TRAINERS}
    results: dict[str, dict[str, list]] = {t: {"means": [], "p": [], "scores": []} for t in TRAINERS}
    cavs = 0
    for k, x in inputs.items():
        cavs += (len(x["concepts"]) + 1) * len(x["random"].sets)
        for t in TRAINERS:
            (scored, base), s = timed(score_concepts, x["concepts"], x["random"], x["gradients"],
                                      seed=params.seed, model=t, alpha=params.cav_alpha)
            seconds[t] += s
            results[t]["means"] += [c.mean for c in scored]
            results[t]["p"] += [c.p_value for c in scored]
            results[t]["scores"].append(np.concatenate([np.stack([c.scores for c in scored]), base.scores[None]]))
    ref = results["torch"]
    sig_ref = np.asarray(ref["p"]) <= params.p_threshold
    agreement = {}
    print(f"the run's own CAVs ({cavs}): seconds per trainer (score_concepts: fits + TCAV + t-tests)")
    for t in TRAINERS:
        diff = np.mean([np.abs(a_ - b_).mean() for a_, b_ in zip(results[t]["scores"], ref["scores"])])
        sig = np.asarray(results[t]["p"]) <= params.p_threshold
        agreement[t] = float((sig == sig_ref).mean())
        order = np.corrcoef(np.argsort(np.argsort(results[t]["means"])), np.argsort(np.argsort(ref["means"])))[0, 1]
        print(f"  {t:8s} {seconds[t]:7.3f} s   mean |TCAV score - torch's| {diff:.4f}   significance as torch's "
              f"{agreement[t]:.3f} ({int(sig.sum())} significant against {int(sig_ref.sum())})   rank correlation "
              f"of concept means with torch's {order:.3f}")

    # The scaled case: `scale` times the random sets per class, fits only.
    big = {t: 0.0 for t in TRAINERS}
    big_cavs = 0
    rng = np.random.default_rng(0)
    for k, x in inputs.items():
        pool = np.concatenate([*x["random"].sets, x["random"].baseline])
        sets = [pool[rng.choice(len(pool), size=len(x["random"].baseline), replace=False)]
                for _ in range(a.scale * len(x["random"].sets))]
        positives = [cv for cv in x["concepts"] for _ in sets]
        negatives = [s for _ in x["concepts"] for s in sets]
        seeds = [params.seed + i for _ in x["concepts"] for i in range(len(sets))]
        big_cavs += len(positives)
        for t in TRAINERS:
            n = len(positives) if t != "sgd" else max(1, len(positives) // 10)
            _, s = timed(fit_cavs, positives[:n], negatives[:n], seeds[:n], model=t, alpha=params.cav_alpha)
            big[t] += s * len(positives) / n
    print(f"{a.scale}x the random sets ({big_cavs} CAVs), seconds of the fits: "
          + ", ".join(f"{t} {s:.2f}" + (" (a tenth timed, scaled)" if t == "sgd" else "") for t, s in big.items()))
    print(f"fastcav_speedup_vs_torch={big['torch'] / big['fastcav']:.1f} "
          f"fastcav_speedup_vs_sklearn={big['sgd'] / big['fastcav']:.1f} "
          f"fastcav_significance_agreement={agreement['fastcav']:.3f}")


if __name__ == "__main__":
    main()
