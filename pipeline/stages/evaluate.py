"""Step 10, evaluate (the paper's experiments), on every class's scoring videos, per layer, in
one pool of model actors: causal concept importance (the drop in class probability when one
concept's voxels are mean-filled), then deletion and insertion curves with concepts in TCAV
order (the paper's) and in causal order, against bottom-first and random orders. Writes
evaluation.parquet and causal_importance in concepts.parquet; run.json gets the summaries."""

from __future__ import annotations

import logging
from typing import Any, Iterable, Optional

import pyarrow as pa

from pipeline import console, schemas
from pipeline.activations.params import ActivateParams
from pipeline.evaluation.deletion import EvaluateParams, Plan
from pipeline.evaluation.summary import causal_importance, curves, single_concept_plans, summarise
from pipeline.orchestration.actors import ModelActors
from pipeline.orchestration.runtime import Progress
from pipeline.params import from_section
from pipeline.run_folder import CONCEPTS, EVALUATION, VOXEL_IMPORTANCE
from pipeline.stages.base import Job

log = logging.getLogger("pipeline")

Assignment = tuple[list[int], list[Optional[str]]]  # a video's supervoxel ids and the concept of each (or None)


def run(job: Job) -> None:
    job.begin("evaluate")
    c, folder = job.c, job.folder
    for needed in (CONCEPTS, VOXEL_IMPORTANCE):
        folder.require(needed, "evaluate", "concepts")
    concepts = folder.read(CONCEPTS).to_pylist()
    vi = folder.read(VOXEL_IMPORTANCE).to_pylist()
    videos = {r["video_id"]: r for r in folder.read_videos()}
    ranked: dict[tuple[str, str], list[str]] = {}
    for row in sorted(concepts, key=lambda r: r["rank"]):
        ranked.setdefault((row["target_class"], row["layer"]), []).append(row["concept"])
    # Each scoring video, scored for its own class: its supervoxels' concepts per layer.
    assignments: dict[str, dict[str, Assignment]] = {}
    for row in vi:
        if videos[row["video_id"]]["label"] == row["target_class"] and (row["target_class"], row["layer"]) in ranked:
            assignments.setdefault(row["video_id"], {})[row["layer"]] = (row["supervoxel_ids"], row["concepts"])
    if not assignments:
        log.warning("evaluate: no scoring video has concepts to remove; nothing to evaluate")
        job.finish("evaluate", videos=0)
        return
    class_of = {vid: videos[vid]["label"] for vid in assignments}
    params = from_section(EvaluateParams, c["evaluate"])
    actor_params = from_section(ActivateParams, {**c["activate"], "gradients": False, "measure_batch": False})
    with ModelActors(c, actor_params, job.module) as pool:
        # Pass 1: causal importance, one concept removed at a time.
        single = {vid: {layer: single_concept_plans(ranked[(class_of[vid], layer)]) for layer in a}
                  for vid, a in assignments.items()}
        first = run_plans(job, pool, videos, assignments, single, "evaluate (causal importance)")
        causal, correct_without = causal_importance(ranked, first, class_of)
        # Pass 2: the curves, both rankings, every order, both modes; a plan already run is not run again.
        curve_sets = curves(ranked, causal, params)
        todo = {vid: {layer: [p for p in dict.fromkeys(p for *_, ps in curve_sets[(class_of[vid], layer)] for p in ps)
                              if p not in first[vid][layer]] for layer in a} for vid, a in assignments.items()}
        second = run_plans(job, pool, videos, assignments, todo, "evaluate (deletion/insertion)")

    tcav_mean = {r["concept"]: r["tcav_mean"] for r in concepts}
    rows: list[dict[str, Any]] = []
    summary: dict[str, dict[str, Any]] = {}
    for (k, layer), curve_list in curve_sets.items():
        outcomes = {v: {**first[v][layer], **second[v][layer]} for v in second
                    if class_of[v] == k and layer in second[v]}
        if not outcomes:
            continue
        points, summary.setdefault(k, {})[layer] = summarise(k, layer, curve_list, outcomes, ranked[(k, layer)],
                                                             tcav_mean, causal, correct_without)
        rows += points
    folder.write_table(EVALUATION, pa.Table.from_pylist(rows, schema=schemas.EVALUATION))
    for row in concepts:
        row["causal_importance"] = causal.get(row["concept"])
    folder.write_table(CONCEPTS, pa.Table.from_pylist(concepts, schema=schemas.CONCEPTS))
    job.finish("evaluate", videos=len(assignments),
               plans=sum(len(p) for w in (single, todo) for by_layer in w.values() for p in by_layer.values()),
               classes=summary)
    if c["dataset"]["kind"] == "synthetic":
        ground_truth(job, videos, vi, causal, summary)
    job.record["evaluation_table"] = console.evaluation_table(summary)


def run_plans(job: Job, pool: ModelActors, videos: dict[str, dict[str, Any]],
              assignments: dict[str, dict[str, Assignment]], plans: dict[str, dict[str, list[Plan]]],
              label: str) -> dict[str, dict[str, dict[Plan, tuple[float, bool]]]]:
    """Every video's plans on the model actors: {video: {layer: {plan: (class probability,
    correct)}}}, by video id (whatever order they finished in, so that the means over videos
    do not depend on the scheduling). Label volumes are read one part at a time and each
    video's travel with it; a video that fails stops the stage, naming it."""
    fill = float(job.c["activate"]["fill"])
    items: Iterable[tuple[str, tuple]] = (
        (vid, (videos[vid], labels, assignments[vid], plans[vid], fill))
        for vid, labels in job.folder.iter_label_volumes(set(plans)))
    out: dict[str, dict[str, dict[Plan, tuple[float, bool]]]] = {}
    progress = Progress(label, len(plans))
    for res in pool.call("evaluate", items):
        if not res.ok:
            raise RuntimeError(f"{label}: video {res.key!r}: {res.error}")
        out[res.key] = {layer: dict(zip(plans[res.key][layer], zip(r["prob"], r["correct"])))
                        for layer, r in res.value.items()}
        progress.update()
    missing = sorted(set(plans) - set(out))
    if missing:
        raise RuntimeError(f"{label}: no label volumes for {len(missing)} videos, e.g. {missing[:3]}")
    return dict(sorted(out.items()))


def ground_truth(job: Job, videos: dict[str, dict[str, Any]], vi: list[dict[str, Any]], causal: dict[str, float],
                 summary: dict[str, dict[str, Any]], dilation: int = 3) -> None:
    """On the synthetic corpus, the share of positive voxel-importance mass inside the dilated
    actor tube per (class, layer), for causal and TCAV scores and two ground-truth scorings."""
    from pipeline.evaluation.ground_truth import importance_mass_report, video_actor_tube

    rows = [r for r in vi if videos[r["video_id"]]["label"] == r["target_class"]]
    volumes = job.folder.label_volumes(sorted({r["video_id"] for r in rows}))
    tubes = {vid: video_actor_tube(job.c["dataset"]["root"], videos[vid], dilation) for vid in volumes}
    for (k, layer), shares in importance_mass_report(rows, causal, volumes, tubes).items():
        if k in summary and layer in summary[k]:
            summary[k][layer].update(shares)
