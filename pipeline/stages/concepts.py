"""Steps 5-9, concepts: per class the model knows and per explained layer, one Ray task that
discovers concepts (k-means, acceptance rules), fits CAVs against random sets, scores them with
TCAV, tests them against the random baseline and assigns the scoring videos' supervoxels to them
(voxel importance).

Each (class, layer) task reads only its own partition of activations/ and clip_activations/,
and the whole-clip vectors of its random sets from a per-layer pool that one task loads into
the object store; it writes its own parts (concept_members/, tcav/, voxel_importance/ under
class=<k>/layer=<layer>/, its concepts in _concepts/) and its marker. The driver holds video ids
and per-class summaries; a rerun with the same settings over the same activations skips the
finished pairs (other settings: the pairs are recomputed). concepts.parquet, the whole-run
table of concepts, and metrics/concepts.parquet, each class's figures, are written at the end."""

from __future__ import annotations

import json
import logging
import posixpath
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipeline import console, io, schemas
from pipeline.activations.params import ActivateParams
from pipeline.concepts.explain import Supervoxels, explain_class_layer, split_videos
from pipeline.concepts.params import ConceptParams
from pipeline.concepts.user import digest, for_class, is_user
from pipeline.evaluation.summary import class_recognition
from pipeline.orchestration.actors import ModelActors
from pipeline.orchestration.fanout import map_tasks
from pipeline.orchestration.runtime import Progress
from pipeline.params import from_section
from pipeline.scoring.randomisation import randomised_gradients
from pipeline.scoring.tcav import RandomSets, draw_random_sets
from pipeline.run_folder import (ACTIVATIONS, CLIP_ACTIVATIONS, CONCEPT_MEMBERS, CONCEPT_METRICS, CONCEPTS, PREDICTIONS,
                                 RANDOMISED_GRADIENTS, TCAV, VOXEL_IMPORTANCE, RunFolder, RunFolderError, partition,
                                 reduction_fingerprint, unit_key)
from pipeline.stages.activate import activated_layers
from pipeline.stages.base import Job, ground_truth_root
from pipeline.stages.user_concepts import user_concepts, user_supervoxels

log = logging.getLogger("pipeline")

PAIR_CONCEPTS = "_concepts"  # each (class, layer)'s concept rows; concepts.parquet is their union
OUTPUTS = (PAIR_CONCEPTS, CONCEPT_MEMBERS, TCAV, VOXEL_IMPORTANCE)


def run(job: Job) -> None:
    job.begin("concepts")
    cfg, folder, params = job.cfg, job.folder, job.cfg.concepts
    pred = folder.read(PREDICTIONS, columns=["video_id", "label", "label_index", "correct"]).sort_by("video_id")
    layers = activated_layers(folder)
    num_model_classes = len(io.read_row_groups(io.part_files(folder.path(PREDICTIONS))[0], [0],
                                               columns=["logits"]).column("logits")[0].as_py())
    all_ids = np.asarray(pred.column("video_id").to_pylist(), dtype=object)  # sorted
    all_labels = np.asarray(pred.column("label").to_pylist(), dtype=object)
    label_index = pred.column("label_index").to_numpy(zero_copy_only=False)
    correct = dict(zip(all_ids.tolist(), pred.column("correct").to_pylist()))
    known = label_index >= 0
    counts = {str(k): int(n) for k, n in zip(*np.unique(all_labels[known].astype(str), return_counts=True))}
    classes = sorted(k for k, n in counts.items() if n >= 2)
    for k in sorted(set(counts) - set(classes)):
        log.warning("concepts: class %r skipped: %d activated video (one to discover with and one to score are "
                    "needed)", k, counts[k])
    if len({*all_labels[known].tolist()}) < 2:
        raise RunFolderError(f"concepts need activated videos of at least two classes (a class's random sets are the "
                             f"other classes' videos); {folder.root} has {counts}")
    user = user_concepts(folder, params.user, all_ids, classes)
    fingerprint = pairs_fingerprint(job, user, list(zip(all_ids.tolist(), all_labels.tolist())))
    done = folder.done_units("concepts", OUTPUTS, fingerprint, "concepts", stale="discard")
    records = {(r["class"], r["layer"]): r for r in map(json.loads, done.column("record").to_pylist())}

    class_info: dict[str, dict[str, Any]] = {}
    splits: dict[str, ClassSplit] = {}
    for k in classes:
        mine = known & (all_labels == k)
        discovery, scoring = split_videos(all_ids[mine].tolist(), params.discovery_fraction, params.seed)
        accuracy, chance, recognised = class_recognition([correct[v] for v in scoring], num_model_classes)
        pool = all_ids[all_labels != k]  # sorted: the random sets are drawn from every other video
        sets = draw_random_sets(pool, params.num_random_exp, params.random_set_size, params.seed).map(
            lambda i: pool[i].tolist())
        splits[k] = ClassSplit(discovery, scoring, sets, int(label_index[mine][0]))
        class_info[k] = {"discovery_videos": len(discovery), "scoring_videos": len(scoring),
                         "scoring_accuracy": accuracy, "chance": chance, "recognised": recognised,
                         "random_pool_videos": len(pool), "random_set_size": len(sets.baseline)}
        if not recognised:
            log.warning("concepts: class %r: accuracy %.2f on %d scoring videos, not significantly above "
                        "chance (%.2f): its concepts may say little about the model", k, accuracy, len(scoring), chance)

    pairs = [(k, layer) for k in classes for layer in layers]
    todo = [p for p in pairs if p not in records]
    log.info("concepts: %d (class, layer) pairs to explain (%d already done)", len(todo), len(records))
    if todo:
        todo_classes = sorted({k for k, _ in todo})
        if params.randomisation_check:
            randomisation_check(job, todo_classes, {k: splits[k].scoring for k in todo_classes}, layers, params.seed)
        videos = folder.read_videos(["video_id", "clip_frame_indices", "clip_height", "clip_width"])
        truth = ground_truth_root(cfg)  # the ground truth also needs the discovery videos' clips
        wanted = set(v for k in todo_classes for v in splits[k].scoring + (splits[k].discovery if truth else []))
        clips = {r["video_id"]: r for r in
                 videos.filter(pc.is_in(videos.column("video_id"), pa.array(sorted(wanted)))).to_pylist()}
        del videos
        where = folder.label_index() if truth else {}
        pools = {layer: load_clip_pool.remote(folder, layer) for layer in sorted({lay for _, lay in todo})}

        def tasks() -> Iterator[tuple[tuple[str, str], tuple]]:
            for k, layer in todo:
                split = splits[k]
                shown = split.discovery + split.scoring if truth else split.scoring
                work = PairWork(k, layer, split, {"class_accuracy": class_info[k]["scoring_accuracy"],
                                                  "class_recognised": class_info[k]["recognised"]},
                                {v: clips[v] for v in shown},
                                {v: where[v] for v in split.discovery + split.scoring if v in where},
                                *user_work(user, k, all_ids, all_labels))
                yield (k, layer), (folder, work, pools[layer], params, truth, fingerprint,
                                   job.cav_trainer)

        for out in map_tasks(explain_pair, tasks(), progress=Progress("concepts", len(todo),
                                                                      unit="(class, layer) pairs"),
                             label_selector=job.cpu_selector, on_error="concepts:"):
            records[out.key] = out.value
        del pools

    for (k, layer) in pairs:  # the pairs' order, whatever finished first
        rec = records[(k, layer)]
        for note in rec["info"]["notes"]:
            log.warning("concepts: %r/%s: %s", k, layer, note)
        class_info[k].setdefault("layers", {})[layer] = rec["info"]
    concepts = assemble_concepts(folder, [records[p]["part"] for p in pairs])
    folder.write_table(CONCEPTS, concepts)
    folder.write_table(CONCEPT_METRICS, metrics_table(class_info))
    rows = concepts.drop_columns(["centroid"]).to_pylist()
    job.finish("concepts", pairs=len(pairs), pairs_skipped_done=len(pairs) - len(todo), classes=class_info)
    job.counts.update(concepts_found=len(rows), concepts_significant=sum(r["significant"] for r in rows))
    job.record["concept_table"] = console.concept_table(rows, class_info)


def user_work(user: Optional[pa.Table], target_class: str, ids: np.ndarray, labels: np.ndarray
              ) -> tuple[dict[str, list[tuple[str, int]]], dict[str, Optional[str]]]:
    """The user concepts that join a class (their members) and their videos' labels."""
    if user is None:
        return {}, {}
    mine = for_class(user, target_class)
    videos = {v for members in mine.values() for v, _ in members}
    at = np.searchsorted(ids, np.asarray(sorted(videos), dtype=object))  # `ids` sorted
    return mine, dict(zip(sorted(videos), labels[at].tolist()))


def pairs_fingerprint(job: Job, user: Optional[pa.Table], videos: list[tuple[str, str]]) -> str:
    """The (class, layer) pairs' fingerprint: the activations', the concept settings (the user's
    concepts by their rows, not their file's path), the ground truth, the videos and labels."""
    settings = {n: v for n, v in job.c["concepts"].items() if n != "user"}  # as before, without one
    if user is not None:
        settings["user"] = digest(user)
    return reduction_fingerprint(
        job.fingerprints["activate"],
        {"concepts": settings, "ground_truth": ground_truth_root(job.cfg)},
        videos,
    )


def _supervoxels(t: pa.Table) -> Supervoxels:
    """A partition's rows (video_id, supervoxel_id, vector) as the explanation takes them."""
    return Supervoxels(schemas.vector_matrix(t), t.column("video_id").to_pylist(),
                       t.column("supervoxel_id").to_pylist())


def metrics_table(class_info: dict[str, dict[str, Any]]) -> pa.Table:
    """metrics/concepts.parquet: each class's split and recognition (layer null) and each
    explained layer's figures (concepts found, significant, the random baseline, the ground
    truth on a synthetic corpus, the randomisation check)."""
    rows = []
    for k, info in class_info.items():
        rows += schemas.metric_rows(k, None, {n: v for n, v in info.items() if n != "layers"})
        for layer, figures in info.get("layers", {}).items():
            rows += schemas.metric_rows(k, layer, figures)
    return pa.Table.from_pylist(rows, schema=schemas.METRICS)


def assemble_concepts(folder: RunFolder, parts: list[str]) -> pa.Table:
    """concepts.parquet: every pair's concepts, in the pairs' order."""
    files = {posixpath.basename(f): f for f in io.part_files(folder.path(PAIR_CONCEPTS))}
    tables = [io.read_table(files[p]) for p in parts if p in files]
    empty = pa.Table.from_pylist([], schema=schemas.CONCEPTS)
    return pa.concat_tables([t.cast(schemas.CONCEPTS) for t in tables]) if tables else empty


@ray.remote(num_cpus=1, max_retries=2)
def load_clip_pool(folder: RunFolder, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """Every activated video's whole-clip vector at one layer, sorted by video id: (ids, [N, C]
    float32), held once in the object store for every (class, layer) task of that layer."""
    t = folder.read(f"{CLIP_ACTIVATIONS}/{partition(layer=layer)}", columns=["video_id", "vector"]).sort_by("video_id")
    ids = np.asarray(t.column("video_id").to_pylist(), dtype=object)
    return ids, schemas.vector_matrix(t)


@dataclass
class ClassSplit:
    """A class's videos for its explanation: discovery and scoring videos, the random sets'
    videos (other classes'), and the model's index of the class (its gradients' class)."""

    discovery: list[str]
    scoring: list[str]
    random: RandomSets[list[str]]
    gradient_class: int


@dataclass
class PairWork:
    """One (class, layer) to explain: its class's split, the columns its concept rows take
    from the class (class_accuracy, class_recognised), the videos.parquet clip columns of its
    scoring videos (and discovery videos, for the ground truth), where their label volumes are,
    and the user's concepts for the class."""

    target_class: str
    layer: str
    split: ClassSplit
    class_columns: dict[str, Any]
    clips: dict[str, dict[str, Any]]
    where: dict[str, tuple[str, int]]
    user: dict[str, list[tuple[str, int]]]  # the user concepts that join the class: their members
    user_labels: dict[str, Optional[str]]  # their videos' labels (activations/' class partitions)


def explain_pair(folder: RunFolder, work: PairWork, pool: tuple[np.ndarray, np.ndarray], params: ConceptParams,
                 truth_root: Optional[str], fingerprint: str, trainer: Any = None) -> dict[str, Any]:
    """One (class, layer), in a Ray task: read its partition, explain it
    (`explain_class_layer`), write its parts and marker; returns its small record. `pool`: the
    layer's whole-clip vectors (video ids sorted, vectors) the random sets are drawn from."""
    k, layer, split, clips = work.target_class, work.layer, work.split, work.clips
    discovery, scoring = split.discovery, split.scoring
    sv = folder.read(f"{ACTIVATIONS}/{partition(layer=layer, target_class=k)}",
                     columns=["video_id", "supervoxel_id", "vector"]).sort_by([("video_id", "ascending"),
                                                                                ("supervoxel_id", "ascending")])
    disc = sv.filter(pc.is_in(sv.column("video_id"), pa.array(discovery, type=pa.string())))
    sc = sv.filter(pc.is_in(sv.column("video_id"), pa.array(scoring, type=pa.string())))
    whole = folder.read(f"{CLIP_ACTIVATIONS}/{partition(layer=layer, target_class=k)}",
                        columns=["video_id", "gradient", "gradient_class"])
    grad_of = {v: g for v, g, gc in zip(*(whole.column(n).to_pylist() for n in whole.column_names))
               if gc == split.gradient_class}
    gradients = np.asarray([grad_of[v] for v in scoring if v in grad_of], dtype=np.float32)
    ids, vectors = pool
    sets = split.random.map(lambda s: vectors[np.searchsorted(ids, np.asarray(s, dtype=object))])
    randomised = None
    if params.randomisation_check:
        rg = folder.read(f"{RANDOMISED_GRADIENTS}/{partition(target_class=k)}",
                         filter=pc.field("layer") == layer)
        by_video = dict(zip(rg.column("video_id").to_pylist(), rg.column("gradient").to_pylist()))
        randomised = np.asarray([by_video[v] for v in scoring], dtype=np.float32)
    res = explain_class_layer(k, layer, _supervoxels(disc), len(discovery), gradients, sets, params,
                              _supervoxels(sc) if sc.num_rows else None, randomised, trainer,
                              user_supervoxels(folder, layer, work.user, work.user_labels))
    for row in res["concepts"]:
        row.update(work.class_columns)
    info = {"k": res["k"], "concepts": len(res["concepts"]), "random_baseline_mean": res["random_mean"],
            "significant": sum(r["significant"] for r in res["concepts"]), "notes": res["notes"],
            "magnitude_significant": sum(r["magnitude_significant"] for r in res["concepts"]),
            "tcav_ties": res["ties"], "user_concepts": len(work.user),
            "mean_stability": _mean([r["stability"] for r in res["concepts"] if r["stability"] is not None])}
    if res["randomisation"] is not None:
        check = dict(res["randomisation"])
        for row, after in zip(res["concepts"], check.pop("tcav_mean_after")):
            row["tcav_mean_randomised"] = after
        info["randomisation"] = check
    shapes = {v: [len(r["clip_frame_indices"]), r["clip_height"], r["clip_width"]] for v, r in clips.items()}
    importance = importance_rows(k, layer, res["supervoxel_scores"], shapes)
    if truth_root:
        info["ground_truth"] = _ground_truth(folder, res, importance, work, truth_root)
    part = partition(target_class=k, layer=layer)
    outputs = [(f"{PAIR_CONCEPTS}/{part}", pa.Table.from_pylist(res["concepts"], schema=schemas.CONCEPTS)),
               (f"{CONCEPT_MEMBERS}/{part}", pa.Table.from_pylist(res["members"], schema=schemas.CONCEPT_MEMBERS)),
               (f"{TCAV}/{part}", pa.Table.from_pylist(res["tcav"], schema=schemas.TCAV))]
    if importance:  # one row group per scoring video: a reader of one video reads one group
        outputs.append((f"{VOXEL_IMPORTANCE}/{part}",
                        [pa.Table.from_pylist([r], schema=schemas.VOXEL_IMPORTANCE)
                         for r in sorted(importance, key=lambda r: r["video_id"])]))
    unit = unit_key(k, layer)
    record = {"class": k, "layer": layer, "part": folder.part_name(unit), "info": info}
    folder.write_unit("concepts", unit, outputs, [{"record": record}], fingerprint)
    return record


def _ground_truth(
    folder: RunFolder,
    res: dict[str, Any],
    importance: list[dict[str, Any]],
    work: PairWork,
    truth_root: str,
) -> dict[str, Any]:
    """A synthetic run's check of the pair's discovered concepts against the actor's voxels."""
    from pipeline.evaluation.ground_truth import actor_concept_report, video_actor_tube

    volumes = folder.label_volumes(sorted(work.where), work.where)
    found = [r for r in res["concepts"] if not is_user(r["concept"])]  # found, not given
    members = [m for m in res["members"] if not is_user(m["concept"])]
    pair = (work.target_class, work.layer)
    return actor_concept_report(
        found,
        members,
        importance,
        [pair],
        volumes,
        lambda v: video_actor_tube(truth_root, work.clips[v], 3),
        3,
    )[pair]


def _mean(values: list[float]) -> Optional[float]:
    return round(float(np.mean(values)), 3) if values else None


def importance_rows(target_class: str, layer: str, supervoxel_scores: list[dict[str, Any]],
                    shapes: dict[str, list[int]]) -> list[dict[str, Any]]:
    """voxel_importance/ rows of one (class, layer): per scoring video, its supervoxels' scores."""
    by_video: dict[str, list[dict[str, Any]]] = {}
    for row in supervoxel_scores:
        by_video.setdefault(row["video_id"], []).append(row)
    return [{"video_id": vid, "target_class": target_class, "layer": layer, "shape": shapes[vid],
             "encoding": "supervoxel_scores",
             "supervoxel_ids": [r["supervoxel_id"] for r in rows], "concepts": [r["concept"] for r in rows],
             "scores": [r["score"] for r in rows]} for vid, rows in by_video.items()]


def randomisation_check(job: Job, classes: list[str], scoring: dict[str, list[str]], layers: list[str],
                         seed: int) -> None:
    """The model-randomisation check's gradients, one unit per class on the model actors: for
    every scoring video and layer, the class-logit gradient from the model with every weight
    after that layer re-initialised, written to randomised_gradients/class=<k>/."""
    folder = job.folder
    fingerprint = reduction_fingerprint(job.fingerprints["activate"], {"seed": seed, "layers": layers},
                                        [(v, k) for k in classes for v in scoring[k]])
    done = folder.done_units("randomise", [RANDOMISED_GRADIENTS], fingerprint, "randomisation", stale="discard")
    finished = {json.loads(r)["class"] for r in done.column("record").to_pylist()}
    todo = [k for k in classes if k not in finished]
    if not todo:
        return
    params = from_section(ActivateParams, job.cfg.activate, gradients=True, measure_batch=False)
    progress = Progress("randomisation check", sum(len(scoring[k]) for k in todo))
    with ModelActors(job.cfg, params, job.module, stage="randomisation check", work=len(todo)) as pool:
        items = ((k, (folder, k, scoring[k], layers, seed, fingerprint)) for k in todo)
        for res in pool.map_units(randomise_class, items):
            progress.update(len(scoring[res.key]))
            if not res.ok:
                raise RuntimeError(f"randomisation check: class {res.key!r}: {res.error}")


def randomise_class(actor: Any, folder: RunFolder, target_class: str, video_ids: list[str], layers: list[str],
                    seed: int, fingerprint: str) -> None:
    """One class's randomised-model gradients on a model actor, written with its marker."""
    rows: list[dict[str, Any]] = []
    for row in folder.video_rows(video_ids):
        for layer, grad in randomised_gradients(actor, row, layers, seed).items():
            rows.append({"video_id": row["video_id"], "layer": layer, "gradient": np.asarray(grad, np.float32)})
    table = pa.Table.from_pylist(rows, schema=schemas.RANDOMISED_GRADIENTS)
    unit = unit_key(target_class)
    folder.write_unit("randomise", unit, [(f"{RANDOMISED_GRADIENTS}/{partition(target_class=target_class)}",
                                           table)], [{"record": {"class": target_class}}], fingerprint)

