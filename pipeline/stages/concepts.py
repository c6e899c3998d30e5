"""Steps 5-9, concepts: per class the model knows and per explained layer, one Ray task that
discovers concepts (k-means, acceptance rules), fits CAVs against random sets, scores them with
TCAV, tests them against the random baseline and assigns the scoring videos' supervoxels to them
(voxel importance). Writes concepts.parquet, concept_members.parquet, tcav.parquet and
voxel_importance/; recomputed on every run (a reduction of the activations)."""

from __future__ import annotations

import logging
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from pipeline import console, schemas
from pipeline.activations.params import ActivateParams
from pipeline.concepts.explain import draw_random_sets, explain_class_layer, split_videos
from pipeline.concepts.params import ConceptParams
from pipeline.evaluation.summary import class_recognition
from pipeline.orchestration.actors import ModelActors
from pipeline.orchestration.fanout import map_tasks
from pipeline.orchestration.runtime import Progress
from pipeline.params import from_section
from pipeline.run_folder import ACTIVATIONS, CONCEPT_MEMBERS, CONCEPTS, PREDICTIONS, TCAV, VOXEL_IMPORTANCE
from pipeline.stages.base import Job

log = logging.getLogger("pipeline")


def run(job: Job) -> None:
    job.begin("concepts")
    c, folder = job.c, job.folder
    params = from_section(ConceptParams, c["concepts"])
    folder.require(PREDICTIONS, "concepts", "activate")
    pred = folder.read(PREDICTIONS).to_pandas()
    # Sorted: the concepts do not depend on how the activations were split into parts (a
    # resumed run writes other parts than an uninterrupted one).
    act = folder.read(ACTIVATIONS).to_pandas()
    layers = list(dict.fromkeys(act.layer))  # the model's order, as the actors wrote them
    act = act.sort_values(["layer", "video_id", "supervoxel_id"], kind="stable").reset_index(drop=True)
    videos = {r["video_id"]: r for r in folder.read_videos()}
    num_model_classes = int(len(pred.logits.iloc[0]))
    known = pred[pred.label_index >= 0]
    classes = sorted(known.label.unique())
    pool_ids = {k: sorted(pred.video_id[pred.label != k]) for k in classes}
    clip_rows = act[act.supervoxel_id == -1].set_index(["layer", "video_id"])
    sv_rows = act[act.supervoxel_id >= 0]

    by_id = known.set_index("video_id")
    class_info: dict[str, dict[str, Any]] = {}
    splits: dict[str, tuple[list[str], list[str], list[np.ndarray]]] = {}
    for k in classes:
        discovery, scoring = split_videos(sorted(known.video_id[known.label == k]), params.discovery_fraction,
                                          params.seed)
        accuracy, chance, recognised = class_recognition(list(by_id.loc[scoring].correct),
                                                         num_model_classes)
        sets = draw_random_sets(np.array(pool_ids[k]), params.num_random_exp + 1, params.random_set_size, params.seed)
        splits[k] = (discovery, scoring, sets)
        class_info[k] = {"discovery_videos": len(discovery), "scoring_videos": len(scoring),
                         "scoring_accuracy": accuracy, "chance": chance, "recognised": recognised,
                         "random_pool_videos": len(pool_ids[k]), "random_set_size": int(len(sets[0])) if sets else 0}
        if not recognised:
            log.warning("concepts: the model does not recognise class %r (accuracy %.2f on %d scoring videos, chance "
                        "%.2f): its concepts say little about the model", k, accuracy, len(scoring), chance)
    randomised: dict[tuple[str, str], np.ndarray] = {}
    if params.randomisation_check:
        randomised = randomised_gradients(job, videos, [v for k in classes for v in splits[k][1]], layers,
                                          params.seed)

    def tasks() -> Iterator[tuple[tuple[str, str], tuple]]:
        """The (class, layer) tasks' inputs, made as each task is queued."""
        for k in classes:
            discovery, scoring, sets = splits[k]
            gradient_class = known.label_index[known.label == k].iloc[0]
            for layer in layers:
                sv = sv_rows[(sv_rows.layer == layer) & sv_rows.video_id.isin(discovery)]
                grads = clip_rows.loc[layer].loc[scoring]
                grads = np.stack(grads.gradient[grads.gradient_class == gradient_class])
                pool_vectors = np.stack(clip_rows.loc[layer].loc[pool_ids[k]].vector)
                sc = sv_rows[(sv_rows.layer == layer) & sv_rows.video_id.isin(scoring)]
                rand = np.stack([randomised[(v, layer)] for v in scoring]) if randomised else None
                yield (k, layer), (k, layer, np.stack(sv.vector), list(sv.video_id), list(sv.supervoxel_id),
                                   len(discovery), grads, [pool_vectors[i] for i in sets[:-1]], pool_vectors[sets[-1]],
                                   params, np.stack(sc.vector) if len(sc) else None, list(sc.video_id),
                                   list(sc.supervoxel_id), rand)

    pairs = [(k, layer) for k in classes for layer in layers]
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for out in map_tasks(explain_class_layer, tasks(), progress=Progress("concepts", len(pairs),
                                                                         unit="(class, layer) pairs")):
        if not out.ok:
            raise RuntimeError(f"concepts: {out.key[0]}/{out.key[1]}: {out.error}")
        results[out.key] = out.value

    concepts, members, tcav, importance = [], [], [], []
    shapes = {vid: [len(r["clip_frame_indices"]), r["clip_height"], r["clip_width"]]
              for vid, r in videos.items() if r["status"] == schemas.OK}
    for (k, layer) in pairs:  # the pairs' order, whatever finished first
        res = results[(k, layer)]
        for note in res["notes"]:
            log.warning("concepts: %s/%s: %s", k, layer, note)
        for row in res["concepts"]:
            row.update(class_accuracy=class_info[k]["scoring_accuracy"], class_recognised=class_info[k]["recognised"])
        concepts += res["concepts"]
        members += res["members"]
        tcav += res["tcav"]
        importance += importance_rows(k, layer, res["supervoxel_scores"], shapes)
        info = class_info[k].setdefault("layers", {})
        info[layer] = {"k": res["k"], "concepts": len(res["concepts"]), "random_baseline_mean": res["random_mean"],
                       "significant": sum(r["significant"] for r in res["concepts"]), "notes": res["notes"]}
        if res["randomisation"] is not None:
            check = dict(res["randomisation"])
            for row, after in zip(res["concepts"], check.pop("tcav_mean_after")):
                row["tcav_mean_randomised"] = after
            info[layer]["randomisation"] = check
    folder.write_table(CONCEPTS, pa.Table.from_pylist(concepts, schema=schemas.CONCEPTS))
    folder.write_table(CONCEPT_MEMBERS, pa.Table.from_pylist(members, schema=schemas.CONCEPT_MEMBERS))
    folder.write_table(TCAV, pa.Table.from_pylist(tcav, schema=schemas.TCAV))
    folder.write_table(f"{VOXEL_IMPORTANCE}/part-00000.parquet",
                       pa.Table.from_pylist(importance, schema=schemas.VOXEL_IMPORTANCE))
    if c["dataset"]["kind"] == "synthetic":
        ground_truth(job, videos, concepts, members, importance, pairs, class_info)
    job.finish("concepts", pairs=len(pairs), classes=class_info)
    job.counts.update(concepts_found=len(concepts), concepts_significant=sum(r["significant"] for r in concepts))
    job.record["concept_table"] = console.concept_table(concepts, class_info)


def importance_rows(k: str, layer: str, supervoxel_scores: list[dict[str, Any]],
                    shapes: dict[str, list[int]]) -> list[dict[str, Any]]:
    """voxel_importance/ rows of one (class, layer): per scoring video, its supervoxels' scores."""
    by_video: dict[str, list[dict[str, Any]]] = {}
    for row in supervoxel_scores:
        by_video.setdefault(row["video_id"], []).append(row)
    return [{"video_id": vid, "target_class": k, "layer": layer, "shape": shapes[vid], "encoding": "supervoxel_scores",
             "supervoxel_ids": [r["supervoxel_id"] for r in rows], "concepts": [r["concept"] for r in rows],
             "scores": [r["score"] for r in rows]} for vid, rows in by_video.items()]


def randomised_gradients(job: Job, videos: dict[str, dict[str, Any]], video_ids: list[str], layers: list[str],
                         seed: int) -> dict[tuple[str, str], np.ndarray]:
    """The model-randomisation check's gradients: for every scoring video and layer, the
    class-logit gradient from the model with every weight after that layer re-initialised,
    computed by model actors. Returns {(video_id, layer): vector}."""
    params = from_section(ActivateParams, {**job.c["activate"], "gradients": True, "measure_batch": False})
    progress = Progress("randomisation check", len(video_ids))
    out: dict[tuple[str, str], np.ndarray] = {}
    with ModelActors(job.c, params, job.module) as pool:
        for res in pool.call("randomised_gradients", ((v, (videos[v], layers, seed)) for v in video_ids)):
            progress.update()
            if not res.ok:
                raise RuntimeError(f"randomisation check: video {res.key!r}: {res.error}")
            for layer in layers:
                out[(res.key, layer)] = np.asarray(res.value[layer])
    return out


def ground_truth(job: Job, videos: dict[str, dict[str, Any]], concepts: list[dict[str, Any]],
                 members: list[dict[str, Any]], importance: list[dict[str, Any]], pairs: list[tuple[str, str]],
                 class_info: dict[str, dict[str, Any]], dilation: int = 3) -> None:
    """On the synthetic corpus, the explanation against the actor's voxels, per (class, layer)
    into run.json (`pipeline.evaluation.ground_truth.actor_concept_report`)."""
    from pipeline.evaluation.ground_truth import actor_concept_report, video_actor_tube

    volumes = job.folder.label_volumes(sorted({m["video_id"] for m in members} | {r["video_id"] for r in importance}))
    tubes: dict[str, np.ndarray] = {}

    def tube(vid: str) -> np.ndarray:
        if vid not in tubes:
            tubes[vid] = video_actor_tube(job.c["dataset"]["root"], videos[vid], dilation)
        return tubes[vid]

    for (k, layer), gt in actor_concept_report(concepts, members, importance, pairs, volumes, tube, dilation).items():
        class_info[k]["layers"][layer]["ground_truth"] = gt

