"""The score step of `python -m pipeline.score` (not a stage of the main job): a finished run's
concepts applied to the videos of a new run folder, after that folder's ingest, segment and
activate stages ran with the finished run's settings and model (`pipeline.score` makes sure).

One Ray task per unit (at most activate.videos_per_part videos of one class partition of the new
folder) reads their supervoxel vectors, predictions and label volumes, and the finished run's
concepts of the classes that explain them (`pipeline.scoring.apply`), and writes
voxel_importance/ (as a run's, for every video) and concept_presence/; then one unit per the
same videos on the model actors takes each video's gradient of its predicted class (the one
the activate stage kept, where the label is the predicted class) and writes its sensitivity to
that class's concepts along the run's saved CAVs (concept_sensitivity/,
`pipeline.scoring.sensitivity`). The finished run's
concepts.parquet and concept_importance.parquet are copied beside them: the concepts the videos
were scored with, so the scored
folder reads like a run (`open_run(...).voxel_importance`, the causal maps). A rerun over the
same videos, source and settings skips the units done."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import io, schemas
from pipeline.orchestration.fanout import map_tasks
from pipeline.orchestration.runtime import Progress
from pipeline.run_folder import (ACTIVATIONS, CLIP_ACTIVATIONS, CONCEPT_IMPORTANCE,
                                 CONCEPT_METRICS, CONCEPT_PRESENCE, CONCEPT_SENSITIVITY, CONCEPTS,
                                 PREDICTIONS, TCAV, VOXEL_IMPORTANCE, RunFolder, partition,
                                 reduction_fingerprint, unit_key)
from pipeline.stages.activate import activated_layers
from pipeline.stages.base import Job

log = logging.getLogger("pipeline")

CONCEPT_COLUMNS = ["target_class", "layer", "concept", "centroid", "radius", "tcav_mean", "causal_importance"]
EXAMPLES = 8  # videos per explaining class a partition's record names, for the report


def run(job: Job, source: RunFolder) -> None:
    job.begin("score")
    folder = job.folder
    for needed in (ACTIVATIONS, PREDICTIONS):
        folder.require(needed, "score", "activate")
    layers = activated_layers(folder)
    light = source.concept_view(["target_class", "layer", "concept", "tcav_mean", "causal_importance", "radius"])
    digest = hashlib.sha256(json.dumps(sorted(map(list, zip(*(light.column(n).to_pylist() for n in
                                                               light.column_names)))), default=str).encode())
    explained = source.metrics(CONCEPT_METRICS)  # the classes the run explained, some perhaps with no concept
    classes = sorted(set(light.column("target_class").to_pylist()) | set(explained))  # some may have no concept
    missing = sorted(set(layers) - set(light.column("layer").to_pylist()))
    if missing:
        log.warning("score: the finished run has no concepts at layers %s", missing)
    videos = folder.read_videos(["video_id", "label", "status"])
    ok = videos.filter(pc.equal(videos.column("status"), schemas.OK))
    ids, labels = ok.column("video_id").to_pylist(), ok.column("label").to_pylist()
    del videos, ok
    fingerprint = reduction_fingerprint(job.fingerprints["activate"] + digest.hexdigest(),
                                        {"source": source.root, "layers": layers}, list(zip(ids, labels)))
    by_part: dict[Optional[str], list[str]] = {}
    for vid, label in zip(ids, labels):
        by_part.setdefault(label, []).append(vid)
    per_unit = job.cfg.activate.videos_per_part
    units = {unit_key(p or "", str(i)): (p, vids[i:i + per_unit])
             for p, vids in sorted(by_part.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))
             for i in range(0, len(vids), per_unit)}
    del ids, labels, by_part
    done = folder.done_units("score", [VOXEL_IMPORTANCE, CONCEPT_PRESENCE], fingerprint, "score", stale="discard")
    records = {r["unit"]: r for r in map(json.loads, done.column("record").to_pylist())}
    todo = [u for u in units if u not in records]
    log.info("score: %d units of videos to score with the concepts of %s (%d already done)", len(todo),
             source.root, len(records))
    items = (((units[u][0], u), (folder, source, u, *units[u], layers, classes, fingerprint)) for u in todo)
    for out in map_tasks(score_unit, items, progress=Progress("score", len(todo), unit="units"),
                         label_selector=job.cpu_selector, on_error="score: (class, unit)"):
        records[out.key[1]] = out.value
    for _ in map_tasks(copy_concepts, [(CONCEPTS, (source, folder))], progress=None, on_error="score: copying"):
        pass
    sensed = sensitivity(job, source, units, layers, fingerprint)
    totals = {key: sum(r[key] for r in records.values()) for key in ("videos", "explained", "maps", "present")}
    if totals["videos"] > totals["explained"]:
        log.warning("score: %d of %d videos have no class of the run to explain them (neither their predicted class "
                    "nor their label is one): they have predictions only", totals["videos"] - totals["explained"],
                    totals["videos"])
    examples: dict[str, list[str]] = {}
    for u in units:
        for k, vids in records[u]["examples"].items():
            examples.setdefault(k, []).extend(vids)
    job.finish("score", source_run=source.root, layers=layers, units=len(units),
               units_skipped_done=len(units) - len(todo), **totals, unexplained=totals["videos"] - totals["explained"],
               examples={k: v[:EXAMPLES] for k, v in sorted(examples.items())}, sensitivity=sensed)


def score_unit(folder: RunFolder, source: RunFolder, unit: str, part: str, vids: list[str], layers: list[str],
               classes: list[str], fingerprint: str) -> dict[str, Any]:
    """Some videos of one class partition of the scored folder, in a Ray task (see the module)."""
    from pipeline.scoring.apply import apply_concepts, presence, target_classes

    vids = sorted(vids)
    wanted = pa.array(vids, type=pa.string())
    tables = {}
    for layer in layers:
        name = f"{ACTIVATIONS}/{partition(layer=layer, target_class=part)}"
        if folder.exists(name):  # not when none of the partition's videos has a kept supervoxel
            tables[layer] = folder.read(name, columns=["video_id", "supervoxel_id", "vector"],
                                        filter=pc.is_in(pc.field("video_id"), wanted)).sort_by(
                [("video_id", "ascending"), ("supervoxel_id", "ascending")])
    pred = folder.read(PREDICTIONS, columns=["video_id", "label", "predicted_class"],
                       filter=pc.is_in(pc.field("video_id"), wanted)).to_pylist()
    targets = {r["video_id"]: target_classes(r["label"], r["predicted_class"], classes) for r in pred}
    needed = sorted({k for ks in targets.values() for k in ks})
    concepts: dict[tuple[str, str], list[dict[str, Any]]] = {}
    if needed:
        rows = source.concept_view(CONCEPT_COLUMNS).filter(
            pc.is_in(pc.field("target_class"), pa.array(needed, type=pa.string()))).to_pylist()
        for r in rows:
            concepts.setdefault((r["target_class"], r["layer"]), []).append(r)
    shapes = {r["video_id"]: [len(r["clip_frame_indices"]), r["clip_height"], r["clip_width"]]
              for r in folder.video_rows(vids)}
    volumes = folder.label_volumes(vids)
    maps: dict[tuple[str, str], list[dict[str, Any]]] = {}
    present: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for layer, t in tables.items():
        ids = t.column("video_id").to_numpy(zero_copy_only=False)
        sids = t.column("supervoxel_id").to_numpy()
        vectors = schemas.vector_matrix(t)
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.array([], dtype=int)
        for a, b in zip(starts, [*starts[1:], len(ids)]):
            vid = ids[a]
            for k in targets.get(vid, []):
                cs = concepts.get((k, layer), [])
                names, scores = apply_concepts(vectors[a:b], cs)
                maps.setdefault((k, layer), []).append({
                    "video_id": vid, "target_class": k, "layer": layer, "shape": shapes[vid],
                    "encoding": "supervoxel_scores", "supervoxel_ids": sids[a:b].tolist(), "concepts": names,
                    "scores": scores})
                present.setdefault((k, layer), []).extend(presence(vid, k, layer, sids[a:b], names, volumes[vid], cs))
    outputs: list[tuple[str, Any]] = []
    for (k, layer), rows in sorted(maps.items()):  # one row group per video, as a run's
        outputs.append((f"{VOXEL_IMPORTANCE}/{partition(target_class=k, layer=layer)}",
                        [pa.Table.from_pylist([r], schema=schemas.VOXEL_IMPORTANCE) for r in rows]))
    for (k, layer), rows in sorted(present.items()):
        if rows:
            outputs.append((f"{CONCEPT_PRESENCE}/{partition(target_class=k, layer=layer)}",
                            pa.Table.from_pylist(rows, schema=schemas.CONCEPT_PRESENCE)))
    examples: dict[str, list[str]] = {}
    for vid in vids:
        for k in targets.get(vid, [])[:1]:  # the predicted class (or the label when it is not one)
            if len(examples.setdefault(k, [])) < EXAMPLES:
                examples[k].append(vid)
    record = {"unit": unit, "partition": part, "videos": len(vids),
              "explained": sum(bool(v) for v in targets.values()),
              "maps": sum(len(v) for v in maps.values()), "present": sum(len(v) for v in present.values()),
              "examples": examples}
    folder.write_unit("score", unit, outputs, [{"record": record}], fingerprint)
    return record


def sensitivity(
    job: Job,
    source: RunFolder,
    units: dict[str, tuple[Optional[str], list[str]]],
    layers: list[str],
    fingerprint: str,
) -> dict[str, int]:
    """Each video's sensitivity to the concepts of its predicted class, on the model actors: the
    predicted class's gradients against the run's saved CAVs (`pipeline.scoring.sensitivity`),
    written to concept_sensitivity/<class>/<layer>/ per unit of videos (`units`: its class
    partition and videos), with its marker."""
    from pipeline.activations.params import ActivateParams
    from pipeline.orchestration.actors import ModelActors
    from pipeline.params import from_section

    folder = job.folder
    done = folder.done_units(
        "sensitivity", [CONCEPT_SENSITIVITY], fingerprint, "sensitivity", stale="discard"
    )
    records = {r["unit"]: r for r in map(json.loads, done.column("record").to_pylist())}
    todo = [u for u in units if u not in records]
    if todo:
        params = from_section(ActivateParams, job.cfg.activate, gradients=True, measure_batch=False)
        videos = sum(len(units[u][1]) for u in todo)
        progress = Progress("concept sensitivity", videos, unit="videos")
        with ModelActors(
            job.cfg, params, job.module, stage="concept sensitivity", work=len(todo)
        ) as pool:
            items = ((u, (folder, source, u, *units[u], layers, fingerprint)) for u in todo)
            for res in pool.map_units(sensitivity_unit, items):
                if not res.ok:
                    raise RuntimeError(
                        f"score: concept sensitivity of {len(units[res.key][1])} videos: "
                        f"{res.error}"
                    )
                progress.update(len(units[res.key][1]))
                records[res.key] = res.value
    return {
        "videos": sum(r["videos"] for r in records.values()),
        "units_skipped_done": len(units) - len(todo),
    }


def sensitivity_unit(
    actor: Any,
    folder: RunFolder,
    source: RunFolder,
    unit: str,
    part: Optional[str],
    vids: list[str],
    layers: list[str],
    fingerprint: str,
) -> dict[str, Any]:
    """Some videos' concept sensitivities on a model actor (see `sensitivity`). A gradient the
    activate stage kept (clip_activations/, of the video's label) is used where it is of the
    predicted class; the actor computes the others."""
    from pipeline.scoring.sensitivity import class_gradients, sensitivity_rows

    wanted = pa.array(sorted(vids), type=pa.string())
    pred = {
        r["video_id"]: r
        for r in folder.read(
            PREDICTIONS,
            columns=["video_id", "predicted_index", "predicted_class"],
            filter=pc.is_in(pc.field("video_id"), wanted),
        ).to_pylist()
    }
    stored = stored_gradients(folder, part, wanted, layers)
    cavs: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in folder.video_rows(sorted(vids)):
        p = pred.get(row["video_id"])
        if p is None or p["predicted_class"] is None:
            continue
        k = p["predicted_class"]
        for layer in layers:
            if (k, layer) not in cavs:
                cavs[(k, layer)] = saved_cavs(source, k, layer)
        mine = [layer for layer in layers if cavs[(k, layer)]]
        if not mine:  # the run did not explain the predicted class
            continue
        index = int(p["predicted_index"])
        grads = {lay: stored[(row["video_id"], lay)][1] for lay in mine
                 if stored.get((row["video_id"], lay), (None,))[0] == index}
        missing = [lay for lay in mine if lay not in grads]
        if missing:
            grads.update(class_gradients(actor, row, missing, index))
        for layer in mine:
            rows.setdefault((k, layer), []).extend(
                sensitivity_rows(row["video_id"], k, layer, grads[layer], cavs[(k, layer)])
            )
    outputs = [
        (
            f"{CONCEPT_SENSITIVITY}/{partition(target_class=k, layer=layer)}",
            pa.Table.from_pylist(r, schema=schemas.CONCEPT_SENSITIVITY),
        )
        for (k, layer), r in sorted(rows.items())
    ]
    record = {"unit": unit, "videos": len({r["video_id"] for rs in rows.values() for r in rs})}
    folder.write_unit("sensitivity", unit, outputs, [{"record": record}], fingerprint)
    return record


def stored_gradients(folder: RunFolder, part: Optional[str], wanted: pa.Array, layers: list[str]
                     ) -> dict[tuple[str, str], tuple[int, np.ndarray]]:
    """The whole-clip gradients the activate stage kept for some videos of a class partition:
    (video_id, layer) -> (gradient_class, gradient)."""
    out: dict[tuple[str, str], tuple[int, np.ndarray]] = {}
    for layer in layers:
        name = f"{CLIP_ACTIVATIONS}/{partition(layer=layer, target_class=part)}"
        if not folder.exists(name):
            continue
        t = folder.read(name, columns=["video_id", "gradient", "gradient_class"],
                        filter=pc.is_in(pc.field("video_id"), wanted))
        for vid, grad, k in zip(*(t.column(n).to_pylist() for n in t.column_names)):
            if grad is not None:
                out[(vid, layer)] = (k, np.asarray(grad, dtype=np.float32))
    return out


def saved_cavs(source: RunFolder, target_class: str, layer: str) -> dict[str, np.ndarray]:
    """A run's CAVs of one (class, layer), {concept or "random": directions [R, C]} by random
    set (none when the run did not explain the pair)."""
    name = f"{TCAV}/{partition(target_class=target_class, layer=layer)}"
    if not source.exists(name):
        return {}
    t = source.read(name, columns=["concept", "random_set", "direction"]).sort_by(
        [("concept", "ascending"), ("random_set", "ascending")]
    )
    out: dict[str, list] = {}
    for concept, direction in zip(
        t.column("concept").to_pylist(), t.column("direction").to_pylist()
    ):
        out.setdefault(concept, []).append(direction)
    return {c: np.asarray(d, dtype=np.float32) for c, d in out.items()}


def copy_concepts(source: RunFolder, folder: RunFolder) -> None:
    """The finished run's concepts.parquet and concept_importance.parquet into the scored folder
    (in a task: they hold the centroids), as they are."""
    for name in (CONCEPTS, CONCEPT_IMPORTANCE):
        if source.exists(name):
            folder.write_bytes(name, io.read_bytes(source.path(name)))
