"""The evaluate stage's model work on a finished run, side by side in one process: each
scoring video's deletion/insertion plans with every distinct clip of a pass run once (the
stage's path) and with every plan run (the baseline), on the same model, videos and plans.

    .venv/bin/python bench/evaluate.py RUN_DIR [--classes 3] [--videos 6]

RUN_DIR: a run folder the evaluate stage has finished (`make demo` writes one; so does the
README's API example). The plans are the stage's, in its two passes: first the clip, each
concept removed and the masking subsets; then the curves' plans not run already, ordered by
the causal importance the first pass measured (on each half of the videos too: cross-fitting).
The model is loaded as a model actor loads it, in this process; one untimed call warms it up.
The last line is `distinct_speedup=<baseline/distinct time> plans=<n> clips=<clips run>`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from pipeline.activations.params import ActivateParams  # noqa: E402
from pipeline.evaluation.deletion import EvaluateParams, concept_voxels, in_video  # noqa: E402
from pipeline.evaluation.outcomes import plan_outcomes  # noqa: E402
from pipeline.evaluation.summary import (
    causal_importance,
    curves,
    halves,  # noqa: E402
    masking_plans,
    single_concept_plans,
)
from pipeline.orchestration.actors import ModelActor  # noqa: E402
from pipeline.params import from_section  # noqa: E402
from pipeline.run_folder import VOXEL_IMPORTANCE, RunFolder, partition  # noqa: E402
from pipeline.stages.evaluate import outcome_dicts  # noqa: E402


def first_pass(ranked: dict, params: EvaluateParams) -> dict[str, list]:
    """{layer: plans} of the stage's first pass (`ClassRunner._open`)."""
    return {
        layer: list(
            dict.fromkeys(
                single_concept_plans(names)
                + masking_plans(k, layer, names, params.masking, params.seed)
            )
        )
        for (k, layer), names in ranked.items()
    }


def second_pass(
    ranked: dict, params: EvaluateParams, target_class: str, first: dict, done: dict
) -> dict:
    """{layer: plans} of the stage's second pass (`ClassRunner._next_pass`): the curves' plans
    not in the first, ordered by the first pass's causal importance and each half's."""
    class_of = {v: target_class for v in first}
    causal, _ = causal_importance(ranked, first, class_of)
    crossfit = {
        h: causal_importance(ranked, {v: first[v] for v in vids}, class_of)[0]
        for h, vids in enumerate(halves(list(first), params.seed))
    }
    return {
        layer: [
            p
            for p in dict.fromkeys(p for *_, ps in curve_list for p in ps)
            if p not in set(done[layer])
        ]
        for (_, layer), curve_list in curves(ranked, causal, params, crossfit).items()
    }


def run_pass(host, videos: list, plans: dict, fill: float, distinct: bool) -> dict:
    """{video: {layer: (prob, correct)}} of one pass over the videos."""
    out = {}
    for video, labels, assignments in videos:
        res = plan_outcomes(
            host,
            video,
            labels,
            assignments,
            {layer: plans[layer] for layer in assignments if layer in plans},
            fill,
            distinct=distinct,
        )
        out[video["video_id"]] = {
            layer: (np.asarray(r["prob"]), np.asarray(r["correct"])) for layer, r in res.items()
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--videos", type=int, default=6, help="scoring videos per class")
    args = ap.parse_args()
    folder = RunFolder(args.run_dir)
    c = json.load(open(os.path.join(args.run_dir, "run.json")))["config"]
    params, fill = from_section(EvaluateParams, c["evaluate"]), c["activate"]["fill"]
    concepts = folder.concept_view(["target_class", "layer", "concept", "rank"]).to_pylist()
    actor_params = from_section(ActivateParams, c["activate"], gradients=False, measure_batch=False)
    host = ModelActor(
        c["model"],
        c["clip"],
        actor_params,
        c["segment"]["short_supervoxels"] == "pad",
        0,
        decode_cfg=c.get("decode"),
    )
    print(
        f"model {c['model']['name']}, batch {host.params.batch_size}, bf16 {host.params.autocast}"
    )
    where = folder.label_index()
    classes = []
    for k in list(dict.fromkeys(r["target_class"] for r in concepts))[: args.classes]:
        ranked: dict[tuple[str, str], list[str]] = {}
        for r in sorted((r for r in concepts if r["target_class"] == k), key=lambda r: r["rank"]):
            ranked.setdefault((k, r["layer"]), []).append(r["concept"])
        rows = folder.read(
            VOXEL_IMPORTANCE + "/" + partition(target_class=k),
            columns=["video_id", "layer", "supervoxel_ids", "concepts"],
        ).to_pylist()
        vids = sorted({r["video_id"] for r in rows})[: args.videos]
        videos = [
            (
                video,
                folder.label_volumes([video["video_id"]], where)[video["video_id"]],
                {
                    r["layer"]: (r["supervoxel_ids"], r["concepts"])
                    for r in rows
                    if r["video_id"] == video["video_id"]
                },
            )
            for video in folder.video_rows(vids)
        ]
        classes.append((k, ranked, videos))
    k, ranked, videos = classes[0]
    run_pass(
        host,
        videos[:1],
        {layer: ps[:8] for layer, ps in first_pass(ranked, params).items()},
        fill,
        True,
    )

    timings, answers, passes = {}, {}, []
    for name, distinct in (("distinct", True), ("every plan", False)):
        t0, answers[name] = time.perf_counter(), []
        for k, ranked, videos in classes:
            plans1 = first_pass(ranked, params)
            one = run_pass(host, videos, plans1, fill, distinct)
            by_pass = {v: {layer: [r] for layer, r in by.items()} for v, by in one.items()}
            plans2 = second_pass(ranked, params, k, outcome_dicts([plans1], by_pass), plans1)
            two = run_pass(host, videos, plans2, fill, distinct)
            answers[name] += [r for by in (one, two) for v in sorted(by) for r in by[v].values()]
            if distinct:
                passes += [(videos, plans1), (videos, plans2)]
        timings[name] = time.perf_counter() - t0
        print(f"{name:>10}: {timings[name]:.1f} s")
    n_plans = clips = 0
    for videos, plans in passes:
        for _, labels, assignments in videos:
            for layer in assignments:
                voxels = concept_voxels(labels, *assignments[layer])
                n_plans += len(plans.get(layer, []))
                clips += len({in_video(p, voxels) for p in plans.get(layer, [])})
    print(f"{sum(len(v) for *_, v in classes)} videos, {n_plans} plans, {clips} distinct clips")
    worst = max(
        float(np.abs(a[0] - b[0]).max(initial=0))
        for a, b in zip(answers["distinct"], answers["every plan"])
    )
    print(f"largest class-probability difference between the two: {worst:.2e}")
    ratio = timings["every plan"] / timings["distinct"]
    print(f"distinct_speedup={ratio:.2f} plans={n_plans} clips={clips}")


if __name__ == "__main__":
    main()
