"""The evaluate stage's model work on a finished run, side by side in one process: each
scoring video's deletion/insertion plans with every distinct clip run once (the stage's path)
and with every plan run (the baseline), on the same model, videos and plans.

    .venv/bin/python bench/evaluate.py RUN_DIR [--classes 3] [--videos 4]

RUN_DIR: a run folder the evaluate stage has finished (`make demo` writes one; so does the
README's API example). The plans are the stage's: the clip, each concept removed, the masking
subsets, then every curve ordered by the run's own causal importance. The model is loaded as a
model actor loads it, in this process. The last line is
`distinct_speedup=<baseline/distinct time> plans=<n> clips=<distinct clips run>`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.activations.params import ActivateParams  # noqa: E402
from pipeline.evaluation.deletion import EvaluateParams, concept_voxels, in_video  # noqa: E402
from pipeline.evaluation.outcomes import plan_outcomes  # noqa: E402
from pipeline.evaluation.summary import curves, masking_plans, single_concept_plans  # noqa: E402
from pipeline.orchestration.actors import ModelActor  # noqa: E402
from pipeline.params import from_section  # noqa: E402
from pipeline.run_folder import VOXEL_IMPORTANCE, RunFolder, partition  # noqa: E402


def class_plans(view: list[dict], target_class: str, params: EvaluateParams) -> dict[str, list]:
    """{layer: plans} of a class as the stage runs them over its two passes."""
    ranked: dict[tuple[str, str], list[str]] = {}
    for r in sorted(
        (r for r in view if r["target_class"] == target_class), key=lambda r: r["rank"]
    ):
        ranked.setdefault((target_class, r["layer"]), []).append(r["concept"])
    causal = {r["concept"]: r["causal_importance"] or 0.0 for r in view}
    curve_sets = curves(ranked, causal, params)
    return {
        layer: list(
            dict.fromkeys(
                single_concept_plans(names)
                + masking_plans(target_class, layer, names, params.masking, params.seed)
                + [p for *_, ps in curve_sets[(target_class, layer)] for p in ps]
            )
        )
        for (_, layer), names in ranked.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--videos", type=int, default=4, help="scoring videos per class")
    args = ap.parse_args()
    folder = RunFolder(args.run_dir)
    c = json.load(open(os.path.join(args.run_dir, "run.json")))["config"]
    params = from_section(EvaluateParams, c["evaluate"])
    view = folder.concept_view(
        ["target_class", "layer", "concept", "rank", "causal_importance"]
    ).to_pylist()
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
    work = []
    for k in list(dict.fromkeys(r["target_class"] for r in view))[: args.classes]:
        plans = class_plans(view, k, params)
        rows = folder.read(
            VOXEL_IMPORTANCE + "/" + partition(target_class=k),
            columns=["video_id", "layer", "supervoxel_ids", "concepts"],
        ).to_pylist()
        vids = sorted({r["video_id"] for r in rows})[: args.videos]
        for video in folder.video_rows(vids):
            vid = video["video_id"]
            assignments = {
                r["layer"]: (r["supervoxel_ids"], r["concepts"])
                for r in rows
                if r["video_id"] == vid
            }
            labels = folder.label_volumes([vid], where)[vid]
            work.append(
                (
                    video,
                    labels,
                    assignments,
                    {layer: plans[layer] for layer in assignments if layer in plans},
                )
            )
    n_plans = sum(len(ps) for *_, by_layer in work for ps in by_layer.values())
    timings, answers = {}, {}
    for name, distinct in (("distinct", True), ("every plan", False)):
        t0 = time.perf_counter()
        answers[name] = [
            plan_outcomes(
                host, video, labels, assignments, by_layer, c["activate"]["fill"], distinct=distinct
            )
            for video, labels, assignments, by_layer in work
        ]
        timings[name] = time.perf_counter() - t0
        print(f"{name:>10}: {len(work)} videos, {n_plans} plans, {timings[name]:.1f} s")
    clips = 0
    for video, labels, assignments, by_layer in work:
        for layer, ps in by_layer.items():
            voxels = concept_voxels(labels, *assignments[layer])
            clips += len({in_video(p, voxels) for p in ps})
    worst = max(
        abs(a - b)
        for x, y in zip(answers["distinct"], answers["every plan"])
        for layer in x
        for a, b in zip(x[layer]["prob"], y[layer]["prob"])
    )
    print(f"largest class-probability difference between the two: {worst:.2e}")
    print(
        f"distinct_speedup={timings['every plan'] / timings['distinct']:.2f} plans={n_plans} clips={clips}"
    )


if __name__ == "__main__":
    main()
