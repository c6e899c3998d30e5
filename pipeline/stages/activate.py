"""Steps 3-4, activate: every kept supervoxel and every whole clip through the model, in the
model actors. A unit is up to `activate.videos_per_part` videos of one segment part; the actor
reads their supervoxel tables and label volumes itself (one row group per video), decodes the
next clip in a thread while the model works on this one, builds the patches on its device and
writes the unit's parts: activations/layer=<layer>/class=<label>/ (supervoxel vectors),
clip_activations/layer=<layer>/class=<label>/ (whole clips: vectors and class-logit
gradients) and predictions/ (logits), then its marker. A rerun skips the units already done."""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import io, schemas
from pipeline.activations.params import ActivateParams
from pipeline.activations.video import VideoActivations, activate_video
from pipeline.data.ingest import read_ingested_clip
from pipeline.orchestration.actors import ModelActors
from pipeline.orchestration.prefetch import prefetched
from pipeline.orchestration.runtime import Progress
from pipeline.params import from_section
from pipeline.run_folder import (ACTIVATIONS, CLIP_ACTIVATIONS, DONE, PREDICTIONS, SUPERVOXELS, RunFolder,
                                 RunFolderError, partition)
from pipeline.segmentation.supervoxels import KEPT
from pipeline.stages.base import (Job, VideoRows, candidates, fail_unit, failed_marker, identities, log_failures,
                                  one_at_a_time, unit_failures)

log = logging.getLogger("pipeline")

OUTPUTS = (ACTIVATIONS, CLIP_ACTIVATIONS, PREDICTIONS)
BOX = ["supervoxel_id", "resolution", "label", "t0", "t1", "y0", "y1", "x0", "x1"]


def run(job: Job) -> None:
    job.begin("activate")
    cfg, folder = job.cfg, job.folder
    params = from_section(ActivateParams, cfg.activate)
    fingerprint = job.fingerprints["activate"]
    table = folder.read_videos()
    done = folder.done_units("activate", OUTPUTS, fingerprint, "clip/segment/activate/model",
                             videos=identities(table), retry_failed=cfg.run.retry_failed)
    done_ids = set(done.column("video_id").to_pylist())
    videos = VideoRows(candidates(table))
    where = folder.label_index()  # every segmented video: (segment part, row group)
    todo = [v for v in videos.ids if v in where and v not in done_ids]
    log.info("activate: %d videos to activate (%d already done), layers from model=%s", len(todo), len(done_ids),
             cfg.model.name)
    retried_videos = folder.redone["activate"]["videos_retried"]
    if not todo:
        job.record_failures(unit_failures(folder, "activate"), "activate")
        job.finish("activate", videos_activated=0, videos_skipped_done=len(done_ids), videos_retried=retried_videos)
        return

    stats = {"supervoxel_vectors": 0, "supervoxel_windows": 0, "clip_windows": 0, "actor_seconds": 0.0}
    with ModelActors(cfg, params, job.module, work=len(todo)) as pool:
        described = pool.described
        log.info("activate: %d of up to %d model actor(s) ready on %s, batch size %d, %s", len(described), pool.size,
                 ", ".join(pool.devices), described[0]["batch_size"],
                 {True: "bf16", False: "float32"}.get(pool.bf16, pool.bf16))
        per_part = cfg.activate.videos_per_part
        units = {f"{n:05d}": ids for n, ids in enumerate(activate_units(todo, where, per_part, 2 * pool.size))}
        progress = Progress("activate", len(todo))
        items = ((name, (folder, name, videos.rows(ids), {v: where[v] for v in ids}, fingerprint))
                 for name, ids in list(units.items()))
        retried = 0
        for out in pool.map_units(activate_unit, items, split=one_at_a_time(folder, units, list(OUTPUTS))):
            ids = units[out.key]
            progress.update(len(ids))
            retried += out.attempts > 1
            if not out.ok:  # one video whose actor died (twice retried), or whose unit raised
                fail_unit(folder, "activate", out.key, videos.rows(ids), f"activation failed: {out.error}",
                          fingerprint)
                continue
            for k in stats:
                stats[k] += out.value[k]
    failures = unit_failures(folder, "activate")
    new_failures = log_failures("activate", failures, todo)
    job.record_failures(failures, "activate")
    wall = job.wall("activate")
    activated = len(todo) - new_failures
    windows = stats["supervoxel_windows"] + stats["clip_windows"]
    job.finish("activate", videos_activated=activated, videos_skipped_done=len(done_ids), videos_failed=new_failures,
               videos_retried=retried_videos, units=len(units), units_retried=retried, actors=len(described),
               actors_replaced=pool.replaced, devices=pool.devices, batch_size=described[0]["batch_size"],
               bf16=pool.bf16, layers=described[0]["layers"],
               batch_seconds_per_window=described[0]["batch_seconds_per_window"],
               supervoxel_vectors=stats["supervoxel_vectors"], windows=windows,
               windows_per_s=round(windows / wall, 2) if wall > 0 else None,
               actor_seconds_per_video=round(stats["actor_seconds"] / activated, 4) if activated else None,
               actor_nodes=pool.nodes)


def activate_units(video_ids: list[str], where: dict[str, tuple[str, int]], per_part: int,
                   min_units: int) -> list[list[str]]:
    """The videos to activate in units: each within one segment part (its tables and label
    volumes are in one file), at most `per_part` videos, and at least `min_units` units while
    there are videos enough (two in flight per actor)."""
    size = max(1, min(per_part, math.ceil(len(video_ids) / max(1, min_units))))
    by_part: dict[str, list[str]] = {}
    for v in video_ids:
        by_part.setdefault(where[v][0], []).append(v)
    return [ids[i:i + size] for ids in by_part.values() for i in range(0, len(ids), size)]


def activate_unit(actor: Any, folder: RunFolder, unit: str, rows: list[dict[str, Any]],
                  where: dict[str, tuple[str, int]], fingerprint: str) -> dict[str, Any]:
    """One unit on a model actor (`ModelActor.run`): method steps 3-4 for its videos, the next
    clip decoded while the model works; writes the unit's parts and marker, returns counts."""
    ids = [r["video_id"] for r in rows]
    part = where[ids[0]][0]
    groups = sorted({where[v][1] for v in ids})
    sv = io.read_row_groups(folder.path(SUPERVOXELS, part), groups, columns=["video_id", "status", *BOX])
    sv = sv.filter(pc.equal(sv.column("status"), KEPT))
    tables: dict[str, dict[str, np.ndarray]] = {}
    for name, g in sv.to_pandas().groupby("video_id", sort=False):
        tables[str(name)] = {k: g[k].to_numpy() for k in BOX}

    def load(row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        vid = row["video_id"]
        return read_ingested_clip(row, actor.clip_spec, actor.limits).frames, folder.label_volumes([vid], where)[vid]

    results: list[VideoActivations] = []
    markers: list[dict[str, Any]] = []
    layers = json.dumps(list(actor.model.layers))
    for row, loaded in prefetched(rows, load):
        vid = row["video_id"]
        try:
            if isinstance(loaded, Exception):
                raise loaded
            frames, labels = loaded
            res = activate_video(actor.model, vid, frames, labels, tables.get(vid, {}), row.get("label"),
                                 actor.params, actor.device, actor.pad_short)
        except Exception as e:  # a video that fails fails alone, with the reason
            markers.append(failed_marker(row, "activation", e))
            continue
        markers.append({"video_id": vid, "record": layers, "identity": row.get("identity")})  # layers in model order
        results.append(res)
    labels_of = {r["video_id"]: r.get("label") for r in rows}
    outputs = activation_tables(results, labels_of, list(actor.model.class_names)) if results else []
    folder.write_unit("activate", unit, outputs, markers, fingerprint)
    return {"supervoxel_vectors": sum(len(r.supervoxel_ids) for r in results),
            "supervoxel_windows": sum(int(r.supervoxel_windows.sum()) for r in results),
            "clip_windows": sum(r.clip_windows for r in results), "actor_seconds": sum(r.seconds for r in results)}


def activated_layers(folder: RunFolder) -> list[str]:
    """The explained layers, in the model's order, from the activate stage's markers."""
    t = folder.read(f"{DONE}/activate", columns=["record"])
    records = pc.drop_null(t.column("record"))
    if not len(records):
        raise RunFolderError(f"no video of {folder.root} has activations: nothing to explain")
    return json.loads(records[0].as_py())


def activation_tables(results: list[VideoActivations], labels: dict[str, Optional[str]],
                      class_names: list[str]) -> list[tuple[str, pa.Table]]:
    """One unit's parts: supervoxel vectors and whole-clip vectors per (layer, class)
    partition, then the predictions."""
    sv: dict[tuple[str, str], dict[str, list]] = {}
    clips: dict[tuple[str, str], dict[str, list]] = {}
    pred: dict[str, list] = {name: [] for name in schemas.PREDICTIONS.names}

    def columns(into: dict, key: tuple[str, str]) -> dict[str, list]:
        return into.setdefault(key, {name: [] for name in schemas.ACTIVATIONS.names})

    for res in results:
        k = labels[res.video_id]
        for layer, vec in res.clip_vectors.items():
            grad = res.gradients.get(layer)
            act = columns(clips, (layer, k))
            act["video_id"].append(res.video_id)
            act["supervoxel_id"].append(-1)
            act["layer"].append(layer)
            act["vector"].append(vec)
            act["n_windows"].append(res.clip_windows)
            act["gradient"].append(grad)
            act["gradient_class"].append(res.gradient_class if grad is not None else None)
        for layer, vecs in res.supervoxel_vectors.items():
            n = len(res.supervoxel_ids)
            act = columns(sv, (layer, k))
            act["video_id"].extend([res.video_id] * n)
            act["supervoxel_id"].extend(res.supervoxel_ids.tolist())
            act["layer"].extend([layer] * n)
            act["vector"].extend(list(vecs))
            act["n_windows"].extend(res.supervoxel_windows.tolist())
            act["gradient"].extend([None] * n)
            act["gradient_class"].extend([None] * n)
        label = labels[res.video_id]
        label_index = class_names.index(label) if label in class_names else -1
        predicted = int(np.argmax(res.logits))
        pred["video_id"].append(res.video_id)
        pred["label"].append(label)
        pred["label_index"].append(label_index)
        pred["logits"].append(res.logits)
        pred["predicted_index"].append(predicted)
        pred["predicted_class"].append(class_names[predicted] if predicted < len(class_names) else None)
        pred["correct"].append(predicted == label_index if label_index >= 0 else None)
        pred["supervoxels"].append(len(res.supervoxel_ids))
        pred["seconds"].append(res.seconds)
        pred["device"].append(res.device)
    outputs = [(f"{ACTIVATIONS}/{partition(layer=layer, target_class=k)}", _table(cols, schemas.ACTIVATIONS))
               for (layer, k), cols in sv.items()]
    outputs += [(f"{CLIP_ACTIVATIONS}/{partition(layer=layer, target_class=k)}", _table(cols, schemas.ACTIVATIONS))
                for (layer, k), cols in clips.items()]
    return outputs + [(PREDICTIONS, _table(pred, schemas.PREDICTIONS))]


def _table(columns: dict[str, list], schema: pa.Schema) -> pa.Table:
    def column(values: list, type_: pa.DataType) -> pa.Array:
        if pa.types.is_list(type_):
            return pa.array([None if v is None else np.asarray(v, dtype=np.float32) for v in values], type=type_)
        return pa.array(values, type=type_)

    return pa.table({k: column(v, schema.field(k).type) for k, v in columns.items()}, schema=schema)
