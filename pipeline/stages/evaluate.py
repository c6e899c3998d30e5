"""Step 10, evaluate (the paper's experiments), per class on its scoring videos, per layer, in
one pool of model actors: causal concept importance (the drop in class probability when one
concept's voxels are mean-filled), then deletion and insertion curves with concepts in TCAV
order (the paper's) and in causal order, against bottom-first and random orders.

A class is the unit: its videos go to the actors in chunks (the actor reads each video's label
volumes and concept assignments itself and decodes the next clip while the model works); once
its first pass is in, its curves are queued; once those are in, a Ray task summarises the class
and writes evaluation/class=<k>/ and its marker. The driver keeps a few classes open at a time
and holds their class probabilities only. A rerun skips finished classes. At the end
each concept's causal importance goes into concept_importance.parquet (the evaluate stage's own
table: `RunFolder.concept_view` joins it to the concepts) and each class's figures into
metrics/evaluate.parquet, both with the digest of the concepts they measured."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
import math
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipeline import console, schemas
from pipeline.activations.params import ActivateParams
from pipeline.data.ingest import read_ingested_clip
from pipeline.evaluation.deletion import EvaluateParams, Plan
from pipeline.evaluation.outcomes import plan_outcomes
from pipeline.evaluation.summary import (causal_importance, crossfit_summary, curves, halves, masking_importance,
                                         masking_plans, masking_summary, single_concept_plans, summarise)
from pipeline.orchestration.actors import ModelActors
from pipeline.orchestration.prefetch import prefetched
from pipeline.orchestration.runtime import Progress
from pipeline.params import from_section
from pipeline.run_folder import (CONCEPT_IMPORTANCE, CONCEPTS, EVALUATE_METRICS, EVALUATION, VOXEL_IMPORTANCE,
                                 RunFolder, partition, reduction_fingerprint, unit_key)
from pipeline.stages.base import Job, VideoRows, ground_truth_root

log = logging.getLogger("pipeline")

Outcomes = dict[str, dict[str, dict[Plan, tuple[float, bool]]]]  # video -> layer -> plan -> (prob, correct)
CHUNK = 8  # videos per actor call at most
LISTED_AHEAD = 2  # classes whose scored videos are listed before they open


def run(job: Job) -> None:
    job.begin("evaluate")
    cfg, folder = job.cfg, job.folder
    concepts = folder.read(CONCEPTS, columns=["target_class", "layer", "concept", "rank", "tcav_mean"])
    light = concepts.to_pylist()
    ranked: dict[tuple[str, str], list[str]] = {}
    for row in sorted(light, key=lambda r: r["rank"]):
        ranked.setdefault((row["target_class"], row["layer"]), []).append(row["concept"])
    tcav_mean = {r["concept"]: r["tcav_mean"] for r in light}
    params, fill = cfg.evaluate, cfg.activate.fill
    concepts_digest = schemas.concepts_digest(concepts)
    fingerprint = reduction_fingerprint(job.fingerprints["activate"] + concepts_digest,
                                        {"evaluate": job.c["evaluate"], "fill": fill,
                                         "ground_truth": ground_truth_root(cfg)}, [])
    done = folder.done_units("evaluate", [EVALUATION], fingerprint, "evaluate", stale="discard")
    records = {r["class"]: r for r in map(json.loads, done.column("record").to_pylist())}
    classes = list(dict.fromkeys(k for k, _ in ranked))
    todo = [k for k in classes if k not in records]
    log.info("evaluate: %d classes to evaluate (%d already done)", len(todo), len(records))

    if todo:
        videos = VideoRows(folder.read_videos())
        where = folder.label_index()
        actor_params = from_section(ActivateParams, cfg.activate, gradients=False,
                                    measure_batch=False)
        with ModelActors(cfg, actor_params, job.module, stage="evaluate") as pool:
            runner = ClassRunner(job, pool, videos, where, ranked, params, fill, fingerprint, tcav_mean)
            records.update(runner.run(todo))

    summary: dict[str, dict[str, Any]] = {}
    causal: dict[str, float] = {}
    masking: dict[str, Optional[float]] = {}
    plans = videos_done = 0
    for k in classes:
        if k in records:
            if records[k]["summary"]:
                summary[k] = records[k]["summary"]
            causal.update(records[k]["causal"])
            masking.update(records[k].get("masking") or {})
            plans += records[k]["plans"]
            videos_done += records[k]["videos"]
    if not summary:
        log.warning("evaluate: no scoring video has concepts to remove; nothing to evaluate")
    names = concepts.column("concept").to_pylist()
    importance = pa.Table.from_arrays(
        [concepts.column("target_class"), concepts.column("layer"), concepts.column("concept"),
         pa.array([causal.get(cn) for cn in names], pa.float64()), pa.array([masking.get(cn) for cn in names],
                                                                            pa.float64())],
        schema=schemas.CONCEPT_IMPORTANCE.with_metadata({"concepts": concepts_digest}))
    folder.write_table(CONCEPT_IMPORTANCE, importance)
    folder.write_table(EVALUATE_METRICS, pa.Table.from_pylist(
        [row for k, layers in summary.items() for layer, figures in layers.items()
         for row in schemas.metric_rows(k, layer, figures)],
        schema=schemas.METRICS.with_metadata({"concepts": concepts_digest})))
    job.finish("evaluate", videos=videos_done, plans=plans, classes_skipped_done=len(classes) - len(todo),
               classes=summary)
    job.record["evaluation_table"] = console.evaluation_table(summary)


class ClassRunner:
    """The evaluate stage's scheduler: classes opened a few at a time, each class's two passes
    on the shared actor queue, each finished class summarised and written by a Ray task."""

    def __init__(self, job: Job, pool: ModelActors, videos: VideoRows, where: dict[str, tuple[str, int]],
                 ranked: dict[tuple[str, str], list[str]], params: EvaluateParams, fill: float, fingerprint: str,
                 tcav_mean: dict[str, float]) -> None:
        self.job, self.pool, self.videos, self.where = job, pool, videos, where
        self.ranked, self.params, self.fill = ranked, params, fill
        self.fingerprint, self.tcav_mean = fingerprint, tcav_mean
        self.queue = pool.queue()
        self.open: dict[str, dict[str, Any]] = {}
        self.finishing: dict[str, ray.ObjectRef] = {}
        self.lister = ClassLister.remote(job.folder)
        self.listed: dict[str, ray.ObjectRef] = {}  # scored_layers of the classes about to open

    def run(self, classes: list[str]) -> dict[str, dict[str, Any]]:
        pending = list(classes)
        progress = Progress("evaluate", len(classes), unit="classes")
        while pending and self.queue.backlog < 2 * self.pool.size:
            self._open(pending.pop(0), pending)
        records: dict[str, dict[str, Any]] = {}
        for out in self.queue:
            k, chunk = out.key
            state = self.open[k]
            if out.ok:
                for vid, by_layer in out.value["outcomes"].items():  # one pass's arrays, in plan order
                    mine = state["results"].setdefault(vid, {})
                    for layer, (prob, correct) in by_layer.items():
                        mine.setdefault(layer, []).append((np.asarray(prob, dtype=np.float64),
                                                           np.asarray(correct, dtype=bool)))
                state["failed"].update(out.value["failed"])
            else:
                state["failed"].update({vid: out.error for vid in chunk})
            state["waiting"] -= 1
            if state["waiting"] == 0:
                self._next_pass(k)
            while pending and self.queue.backlog < 2 * self.pool.size:
                self._open(pending.pop(0), pending)
            records.update(self._collect(progress, block=False))
        records.update(self._collect(progress, block=True))
        ray.kill(self.lister)
        return records

    def _open(self, target_class: str, pending: list[str]) -> None:
        """Queue a class's first pass: each scoring video with every concept removed in turn.
        A class's plans are the same for each of its videos: the driver keeps them once per
        layer, and each video's outcomes as arrays in plan order (a few KB per video). The
        next classes' video lists are asked for now, so they are in when those classes open."""
        for kk in [target_class, *pending[:LISTED_AHEAD]]:
            if kk not in self.listed:
                self.listed[kk] = self.lister.scored_layers.remote(kk)
        layers_of = {vid: mine for vid, layers in ray.get(self.listed.pop(target_class)).items()
                     if (mine := [layer for layer in layers if (target_class, layer) in self.ranked])}
        vids = sorted(layers_of)  # the class's partition holds its own scoring videos only
        plans = {layer: list(dict.fromkeys(single_concept_plans(names) + masking_plans(
                     target_class, layer, names, self.params.masking, self.params.seed)))
                 for (kk, layer), names in self.ranked.items() if kk == target_class}
        self.open[target_class] = {"videos": vids, "layers_of": {v: layers_of[v] for v in vids}, "results": {},
                                   "failed": {}, "pass": 1, "waiting": 0, "plans": [plans]}
        self._queue(target_class)

    def _queue(self, target_class: str) -> None:
        """Queue the class's current pass in chunks of videos (or finish a class left without any)."""
        state = self.open[target_class]
        vids = [v for v in state["videos"] if v not in state["failed"]]
        size = max(1, min(CHUNK, math.ceil(len(vids) / self.pool.size))) if vids else 1
        chunks = [vids[i:i + size] for i in range(0, len(vids), size)]
        state["waiting"] = len(chunks)
        plans = state["plans"][-1]
        for chunk in chunks:
            work = (evaluate_videos, self.job.folder, target_class, self.videos.rows(chunk),
                    {v: state["layers_of"][v] for v in chunk}, plans, {v: self.where[v] for v in chunk}, self.fill)
            self.queue.put((target_class, tuple(chunk)), work, first=state["pass"] == 2)
        if not chunks:
            self._finish(target_class)

    def _next_pass(self, target_class: str) -> None:
        """After the first pass: the class's causal importance orders its curves, whose plans
        not already run make the second pass."""
        state = self.open[target_class]
        if state["pass"] == 2:
            self._finish(target_class)
            return
        ranked = {kl: names for kl, names in self.ranked.items() if kl[0] == target_class}
        first = outcome_dicts(state["plans"][:1], {v: r for v, r in state["results"].items()
                                                   if v not in state["failed"]})
        causal, _ = causal_importance(ranked, first, {v: target_class for v in first}) if first else ({}, {})
        split = halves(list(first), self.params.seed)  # cross-fitting: each half ordered by the other's importance
        crossfit = {h: causal_importance(ranked, {v: first[v] for v in vids}, {v: target_class for v in vids})[0]
                    for h, vids in enumerate(split)}
        state["crossfit"] = (split, crossfit)
        curve_sets = curves(ranked, causal, self.params, crossfit)
        second = {}
        for (_, layer), curve_list in curve_sets.items():
            done = set(state["plans"][0][layer])
            second[layer] = [p for p in dict.fromkeys(p for *_, ps in curve_list for p in ps) if p not in done]
        state["pass"] = 2
        state["plans"].append(second)
        self._queue(target_class)

    def _finish(self, target_class: str) -> None:
        """Hand a class whose passes are in to a Ray task that summarises and writes it."""
        state = self.open.pop(target_class)
        for vid, why in sorted(state["failed"].items()):
            log.warning("evaluate: %r/%r left out: %s", target_class, vid, why)
        ranked = {kl: names for kl, names in self.ranked.items() if kl[0] == target_class}
        results = {v: r for v, r in state["results"].items() if v not in state["failed"]}
        plans = sum(len(p[layer]) for v, by_layer in results.items() for layer in by_layer for p in state["plans"])
        root = ground_truth_root(self.job.cfg)
        tcav = {cn: self.tcav_mean[cn] for names in ranked.values() for cn in names}
        done = ClassOutcomes(target_class, ranked, state["plans"], results, tcav, state["failed"], plans,
                             {v: self.where[v] for v in results}, self.videos.rows(sorted(results)) if root else [],
                             state.get("crossfit", ([], {})))
        self.finishing[target_class] = finish_class.remote(self.job.folder, done, self.params, root, self.fingerprint)

    def _collect(self, progress: Progress, block: bool) -> dict[str, dict[str, Any]]:
        if not self.finishing:
            return {}
        refs = list(self.finishing.values())
        ready, _ = ray.wait(refs, num_returns=len(refs) if block else 1, timeout=None if block else 0)
        out: dict[str, dict[str, Any]] = {}
        for k in [k for k, ref in self.finishing.items() if ref in ready]:
            out[k] = ray.get(self.finishing.pop(k))
            progress.update()
        return out


Results = dict[str, dict[str, list[tuple[np.ndarray, np.ndarray]]]]  # video -> layer -> per pass (prob, correct)


def outcome_dicts(plans: list[dict[str, list[Plan]]], results: Results) -> Outcomes:
    """{video: {layer: {plan: (class probability, correct)}}}, videos by id (so that the means
    over videos do not depend on the order the chunks finished in), from the passes' plan
    lists and each video's arrays in plan order."""
    out: Outcomes = {}
    for vid in sorted(results):
        out[vid] = {}
        for layer, passes in results[vid].items():
            merged: dict[Plan, tuple[float, bool]] = {}
            for by_layer, (prob, correct) in zip(plans, passes):
                merged.update(zip(by_layer[layer], zip(prob.tolist(), correct.tolist())))
            out[vid][layer] = merged
    return out


def evaluate_videos(actor: Any, folder: RunFolder, target_class: str, rows: list[dict[str, Any]],
                    layers_of: dict[str, list[str]], plans: dict[str, list[Plan]],
                    where: dict[str, tuple[str, int]], fill: float) -> dict[str, Any]:
    """A chunk of one class's videos on a model actor (`ModelActor.run`): each video's class
    probability and correctness under each plan of its layers (`plans[layer]`, in order); the
    next video's clip, label volumes and concept assignments loaded while the model works."""
    def load(row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, dict[str, tuple[list[int], list[Optional[str]]]]]:
        vid = row["video_id"]
        vi = folder.read(VOXEL_IMPORTANCE + "/" + partition(target_class=target_class),
                         filter=pc.field("video_id") == vid,
                         columns=["layer", "supervoxel_ids", "concepts"]).to_pylist()
        assignments = {r["layer"]: (r["supervoxel_ids"], r["concepts"]) for r in vi}
        clip = read_ingested_clip(row, actor.clip_spec, actor.limits).frames
        return clip, folder.label_volumes([vid], where)[vid], assignments

    outcomes: dict[str, dict[str, tuple[list[float], list[bool]]]] = {}
    failed: dict[str, str] = {}
    for row, loaded in prefetched(rows, load):
        vid = row["video_id"]
        try:
            if isinstance(loaded, Exception):
                raise loaded
            clip, labels, assignments = loaded
            res = plan_outcomes(actor, row, labels, assignments, {layer: plans[layer] for layer in layers_of[vid]},
                                fill, clip=clip)
        except Exception as e:  # this video is left out of its class's figures, with the reason
            failed[vid] = f"{type(e).__name__}: {e}"
            continue
        outcomes[vid] = {layer: (r["prob"], r["correct"]) for layer, r in res.items()}
    return {"outcomes": outcomes, "failed": failed}


# No CPU reserved (this actor and finish_class): they must run while the model actors hold
# every CPU of a small machine, and their work is small beside the actors'.
@ray.remote(num_cpus=0, max_restarts=2, max_task_retries=2)
class ClassLister:
    """Lists a class's scored videos for the driver, in a process of its own for the stage
    (read in the driver, the two columns of a few hundred one-row groups held about 10 MB of its
    memory per class after they were freed, bench/scale.py; a task per class paid for a new
    worker process each time)."""

    def __init__(self, folder: RunFolder) -> None:
        self.folder = folder

    def scored_layers(self, target_class: str) -> dict[str, list[str]]:
        """The class's scored videos and the layers each was scored at (its voxel_importance
        partition)."""
        try:
            vi = self.folder.read(VOXEL_IMPORTANCE + "/" + partition(target_class=target_class),
                                  columns=["video_id", "layer"])
        except FileNotFoundError:  # no scoring video of the class was scored
            return {}
        out: dict[str, list[str]] = {}
        for vid, layer in zip(vi.column("video_id").to_pylist(), vi.column("layer").to_pylist()):
            out.setdefault(vid, []).append(layer)
        return out


@dataclass
class ClassOutcomes:
    """A class whose passes are in, as the task that summarises it takes it."""

    target_class: str
    ranked: dict[tuple[str, str], list[str]]  # its concepts per (class, layer), in TCAV order
    pass_plans: list[dict[str, list[Plan]]]  # each pass's plans per layer
    results: Results  # each video's outcomes, per pass, in its plans' order
    tcav_mean: dict[str, float]  # its concepts' mean TCAV scores
    failed: dict[str, str]  # videos left out, and why
    plans: int  # plans evaluated (a video runs each distinct clip of a pass once: fewer clips)
    where: dict[str, tuple[str, int]]  # where its videos' label volumes are
    videos: list[dict[str, Any]]  # their videos.parquet rows (the ground truth's clips; [] without one)
    crossfit: tuple[list[list[str]], dict[int, dict[str, float]]]  # the halves and their causal importance


@ray.remote(num_cpus=0, max_retries=2)
def finish_class(folder: RunFolder, done: ClassOutcomes, params: EvaluateParams, truth_root: Optional[str],
                 fingerprint: str) -> dict[str, Any]:
    """One class's figures from its videos' outcomes (in a Ray task): causal importance, the
    curves' points and summaries, in sample and cross-fitted (the halves' causal importance
    ordered the second pass), the ground-truth shares on the synthetic corpus; writes
    evaluation/<k>/ and the class's marker, returns its record."""
    k, ranked, tcav_mean, failed, crossfit = done.target_class, done.ranked, done.tcav_mean, done.failed, done.crossfit
    outcomes = outcome_dicts(done.pass_plans, done.results)
    class_of = {v: k for v in outcomes}
    causal, correct_without = causal_importance(ranked, outcomes, class_of) if outcomes else ({}, {})
    split, half_causal = crossfit
    curve_sets = curves(ranked, causal, params, {int(h): c for h, c in half_causal.items()})
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    masking: dict[str, Optional[float]] = {}
    for (_, layer), curve_list in curve_sets.items():
        mine = {v: by_layer[layer] for v, by_layer in outcomes.items() if layer in by_layer}
        if not mine:
            continue
        in_sample = [c for c in curve_list if not c[0].startswith("causal_from")]
        points, summary[layer] = summarise(k, layer, in_sample, mine, ranked[(k, layer)], tcav_mean, causal,
                                           correct_without)
        cross_points, cross = crossfit_summary(k, layer, curve_list, mine, ranked[(k, layer)], split,
                                                 params.seed)
        bound = summary[layer]["best_single_concept_top1_deletion_accuracy_drop_vs_random"]
        drop = cross.get("crossfit_causal_top1_deletion_accuracy_drop_vs_random")
        if drop is not None:
            cross["crossfit_causal_top1_share_of_bound"] = round(drop / bound, 4) if bound > 0 else None
        summary[layer].update(cross)
        rows += points + cross_points
        names = ranked[(k, layer)]
        masks = masking_plans(k, layer, names, params.masking, params.seed)
        if masks:
            mask_importance = masking_importance(names, masks, mine)
            masking.update(mask_importance)
            summary[layer].update(masking_summary(names, mask_importance, tcav_mean, causal, masks, len(mine)))
    if truth_root and outcomes:
        from pipeline.evaluation.ground_truth import importance_mass_report, localisation_report, video_actor_tube

        vids = sorted(outcomes)
        vi = folder.read(VOXEL_IMPORTANCE + "/" + partition(target_class=k),
                         filter=pc.is_in(pc.field("video_id"), pa.array(vids, type=pa.string()))).to_pylist()
        volumes = folder.label_volumes(vids, done.where)
        tubes = {r["video_id"]: video_actor_tube(truth_root, r, 3) for r in done.videos}
        for report in (importance_mass_report(vi, causal, volumes, tubes), localisation_report(vi, causal, volumes,
                                                                                               tubes)):
            for (kk, layer), shares in report.items():
                if kk == k and layer in summary:
                    summary[layer].update(shares)
    if failed:
        for layer in summary.values():
            layer["videos_failed"] = len(failed)
    record = {"class": k, "summary": summary, "causal": causal, "masking": masking, "plans": done.plans,
              "videos": len(outcomes), "failed": failed}
    table = pa.Table.from_pylist(rows, schema=schemas.EVALUATION)
    folder.write_unit("evaluate", unit_key(k), [(f"{EVALUATION}/{partition(target_class=k)}", table)],
                      [{"record": record}], fingerprint)
    return json.loads(json.dumps(record, default=float))

