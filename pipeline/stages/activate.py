"""Steps 3-4, activate: every kept supervoxel and every whole clip through the model, in the
model actors (patches built on the actor's device from the clip and its label volumes), written
in parts of `activate.videos_per_part` videos: activations/ (vectors, and the whole clips'
class-logit gradients) and predictions/ (logits). A rerun skips the videos already done."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import schemas
from pipeline.activations.params import ActivateParams
from pipeline.activations.video import VideoActivations
from pipeline.orchestration.actors import ModelActors
from pipeline.orchestration.runtime import Progress
from pipeline.params import from_section
from pipeline.run_folder import ACTIVATIONS, PREDICTIONS, SUPERVOXELS
from pipeline.segmentation.supervoxels import KEPT
from pipeline.stages.base import Job

log = logging.getLogger("pipeline")

BOX = ["supervoxel_id", "resolution", "label", "t0", "t1", "y0", "y1", "x0", "x1"]


def run(job: Job) -> None:
    job.begin("activate")
    c, folder = job.c, job.folder
    rows = folder.read_videos()
    ok = {r["video_id"]: r for r in rows if r["status"] == schemas.OK}
    params = from_section(ActivateParams, c["activate"])
    fingerprint = job.fingerprints["activate"]
    done = folder.done_videos(PREDICTIONS, [ACTIVATIONS], fingerprint, "clip/segment/activate/model")

    candidates = folder.read(SUPERVOXELS, columns=["video_id", "status", *BOX]).to_pandas()
    segmented = set(candidates.video_id)  # every segmented video has candidate rows, kept or not
    kept = candidates[candidates.status == KEPT]
    tables = {vid: {k: g[k].to_numpy() for k in BOX} for vid, g in kept.groupby("video_id", sort=False)}
    todo = [vid for vid in ok if vid in segmented and vid not in done]
    log.info("activate: %d videos to activate (%d already done), layers from model=%s", len(todo), len(done),
             c["model"]["name"])
    if not todo:
        job.finish("activate", videos_activated=0, videos_skipped_done=len(done))
        return

    per_part = int(c["activate"]["videos_per_part"])
    buffer: list[VideoActivations] = []
    failures: dict[str, str] = {}
    stats = {"supervoxel_vectors": 0, "supervoxel_windows": 0, "clip_windows": 0, "actor_seconds": 0.0}
    with ModelActors(c, params, job.module) as pool:
        described = pool.described
        log.info("activate: %d model actor(s) on %s, batch size %d, %s", len(described), ", ".join(pool.devices),
                 described[0]["batch_size"], {True: "bf16", False: "float32"}.get(pool.bf16, pool.bf16))
        class_names = described[0]["class_names"]
        items = ((vid, (ok[vid], labels, tables.get(vid, {}))) for vid, labels in folder.iter_label_volumes(set(todo)))
        progress = Progress("activate", len(todo))
        for out in pool.call("activate", items):
            progress.update()
            if not out.ok:
                failures[out.key] = f"activation failed: {out.error}"
                log.warning("activate: %s failed: %s", out.key, failures[out.key])
                continue
            result = out.value
            stats["supervoxel_vectors"] += len(result.supervoxel_ids)
            stats["supervoxel_windows"] += int(result.supervoxel_windows.sum())
            stats["clip_windows"] += result.clip_windows
            stats["actor_seconds"] += result.seconds
            buffer.append(result)
            if len(buffer) >= per_part:
                folder.write_parts(activation_tables(buffer, ok, class_names), fingerprint)
                buffer = []
        if buffer:
            folder.write_parts(activation_tables(buffer, ok, class_names), fingerprint)
    job.record_failures(failures, "activate")
    wall = job.wall("activate")
    activated = len(todo) - len(failures)
    windows = stats["supervoxel_windows"] + stats["clip_windows"]
    job.finish("activate", videos_activated=activated, videos_skipped_done=len(done), videos_failed=len(failures),
               actors=len(described), devices=pool.devices, batch_size=described[0]["batch_size"], bf16=pool.bf16,
               layers=described[0]["layers"], batch_seconds_per_window=described[0]["batch_seconds_per_window"],
               supervoxel_vectors=stats["supervoxel_vectors"], windows=windows,
               windows_per_s=round(windows / wall, 2) if wall > 0 else None,
               actor_seconds_per_video=round(stats["actor_seconds"] / activated, 4) if activated else None,
               actor_nodes=[d["node_id"] for d in described])


def activation_tables(results: list[VideoActivations], videos: dict[str, dict[str, Any]],
                      class_names: list[str]) -> list[tuple[str, pa.Table]]:
    """One part: the activations, then the predictions (the batch's marker), of a batch of videos."""
    act: dict[str, list] = {name: [] for name in schemas.ACTIVATIONS.names}
    pred: dict[str, list] = {name: [] for name in schemas.PREDICTIONS.names}
    for res in results:
        for layer, vec in res.clip_vectors.items():
            grad = res.gradients.get(layer)
            act["video_id"].append(res.video_id)
            act["supervoxel_id"].append(-1)
            act["layer"].append(layer)
            act["vector"].append(vec)
            act["n_windows"].append(res.clip_windows)
            act["gradient"].append(grad)
            act["gradient_class"].append(res.gradient_class if grad is not None else None)
        for layer, vecs in res.supervoxel_vectors.items():
            n = len(res.supervoxel_ids)
            act["video_id"].extend([res.video_id] * n)
            act["supervoxel_id"].extend(res.supervoxel_ids.tolist())
            act["layer"].extend([layer] * n)
            act["vector"].extend(list(vecs))
            act["n_windows"].extend(res.supervoxel_windows.tolist())
            act["gradient"].extend([None] * n)
            act["gradient_class"].extend([None] * n)
        label = videos[res.video_id]["label"]
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
    return [(ACTIVATIONS, _table(act, schemas.ACTIVATIONS)), (PREDICTIONS, _table(pred, schemas.PREDICTIONS))]


def _table(columns: dict[str, list], schema: pa.Schema) -> pa.Table:
    def column(values: list, type_: pa.DataType) -> pa.Array:
        if pa.types.is_list(type_):
            return pa.array([None if v is None else np.asarray(v, dtype=np.float32) for v in values], type=type_)
        return pa.array(values, type=type_)

    return pa.table({k: column(v, schema.field(k).type) for k, v in columns.items()}, schema=schema)
