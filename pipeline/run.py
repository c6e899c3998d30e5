"""The main job, `python -m pipeline`: the method's steps as Ray stages, top to bottom.

    ingest   resolve the corpus, decode every video's clip once    -> videos.parquet
    segment  3D SLIC at several resolutions, dedupe (CPU tasks)     -> supervoxels/, label_volumes/
    activate patches built on the device, model layers (actor pool) -> activations/, predictions/
    concepts k-means, acceptance rules, CAVs, TCAV, significance (a task per class and layer)
                                   -> concepts.parquet, concept_members.parquet, tcav.parquet, voxel_importance/

Every stage writes its output under `run.output_dir` and its wall time, throughput and
counts into `run.json`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from typing import Any, Iterator, Optional

import hydra
import numpy as np
import ray
import pyarrow as pa
import pyarrow.compute as pc
from omegaconf import DictConfig, OmegaConf

from pipeline import io, schemas
from pipeline.config import CONF_DIR, ConfigError, register_configs, to_plain, validate
from pipeline.data.corpus import resolve_corpus
from pipeline.data.ingest import ingest_video
from pipeline.data.video import ClipSpec
from pipeline.io import (next_part_index, part_files, part_metadata, read_parts, stack_label_volumes, write_json,
                         write_part, write_table)
from pipeline.models.registry import model_window
from pipeline.segmentation.supervoxels import DROPPED_DUPLICATE, DROPPED_SHORT, DROPPED_SMALL, KEPT
from pipeline.segmentation.video import SegmentedVideo, SegmentParams, segment_video
from pipeline.activations.video import ActivateParams, VideoActivations
from pipeline.orchestration.actors import call_actors, run_on_actors, start_actors
from pipeline.concepts.explain import ExplainParams, draw_random_sets, explain_class_layer, split_videos
from pipeline.orchestration.runtime import Progress, check_label_selector, init_ray, label_selector, map_tasks

log = logging.getLogger("pipeline")

VERSIONED_PACKAGES = ("pipeline", "ray", "torch", "torchvision", "pytorchvideo", "scikit-image", "faiss-cpu",
                      "pyarrow", "numpy", "av", "hydra-core", "scikit-learn", "scipy")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def absolutise(cfg: DictConfig) -> None:
    """Relative paths in the config are taken from the current directory, once, in the driver:
    tasks and actors may run anywhere."""
    for key in ("run.output_dir", "dataset.root", "dataset.csv", "model.path"):
        value = OmegaConf.select(cfg, key)
        if value and not io.is_uri(str(value)):  # a URI (s3://...) is absolute already
            OmegaConf.update(cfg, key, os.path.abspath(os.path.expanduser(str(value))))


def stage_ingest(c: dict[str, Any], run_dir: str, record: dict[str, Any]) -> pa.Table:
    """Step 1: one row per input video in videos.parquet, ok or failed with the reason."""
    t0 = time.monotonic()
    corpus = resolve_corpus(c["dataset"])
    spec = ClipSpec.from_config(c["clip"])
    settings = json.dumps({"clip": c["clip"]}, sort_keys=True)
    path = os.path.join(run_dir, "videos.parquet")
    if io.exists(path):
        previous = io.read_table(path)
        same_inputs = [(r["video_id"], r["path"]) for r in corpus.rows] == list(
            zip(previous.column("video_id").to_pylist(), previous.column("path").to_pylist()))
        if same_inputs and (previous.schema.metadata or {}).get(b"settings", b"").decode() == settings:
            log.info("ingest: videos.parquet already covers these %d videos with these clip settings; reused",
                     len(corpus.rows))
            _count_videos(previous.to_pylist(), record, time.monotonic() - t0, reused=True)
            return previous
    log.info("ingest: %d videos in %d classes from %s", len(corpus.rows), len(corpus.classes),
             c["dataset"]["root"] or c["dataset"]["csv"])
    progress = Progress("ingest", len(corpus.rows))
    by_id = {r["video_id"]: r for r in map_tasks(ingest_video, corpus.rows, spec, stage="ingest", progress=progress,
                                                       label_selector=label_selector(c["ray"]["cpu_label_selector"]))}
    rows = [by_id[r["video_id"]] for r in corpus.rows]  # manifest order, whatever finished first
    for r in rows:
        r["failed_stage"] = "ingest" if r["status"] == schemas.FAILED else None
        if r["status"] == schemas.FAILED:
            log.warning("ingest: %s failed: %s", r["video_id"], r["error"])
    table = write_videos(rows, run_dir, settings)
    _count_videos(rows, record, time.monotonic() - t0, reused=False)
    return table


def write_videos(rows: list[dict[str, Any]], run_dir: str, settings: str) -> pa.Table:
    table = pa.Table.from_pylist(rows, schema=schemas.VIDEOS.with_metadata({"settings": settings}))
    write_table(table, os.path.join(run_dir, "videos.parquet"))
    return table


def _count_videos(rows: list[dict[str, Any]], record: dict[str, Any], wall: float, reused: bool) -> None:
    failed = sum(r["status"] == schemas.FAILED for r in rows)
    record["stages"]["ingest"] = {
        "wall_s": round(wall, 3), "reused": reused,
        "videos_per_s": round(len(rows) / wall, 3) if wall > 0 and not reused else None,
        "videos_in": len(rows), "videos_ok": len(rows) - failed, "videos_failed": failed,
    }
    record["counts"].update(videos_in=len(rows), videos_ok=len(rows) - failed, videos_failed=failed,
                            classes=len({r["label"] for r in rows}))


class RunFolderError(RuntimeError):
    """The run folder holds outputs made with other settings; the message says what to do."""


def stage_segment(c: dict[str, Any], run_dir: str, record: dict[str, Any]) -> None:
    """Step 2: supervoxels of every ok video, in Parquet parts; a rerun skips what is done."""
    t0 = time.monotonic()
    rows = io.read_table(os.path.join(run_dir, "videos.parquet")).to_pylist()
    spec = ClipSpec.from_config(c["clip"])
    params = SegmentParams.from_config(c["segment"], model_window(c["model"]))
    settings = json.dumps({"clip": c["clip"], "segment": params.as_dict()}, sort_keys=True)
    sv_dir, lv_dir = os.path.join(run_dir, "supervoxels"), os.path.join(run_dir, "label_volumes")

    # The supervoxel part of a batch is written after its label-volume part: it marks the batch done.
    done = _done_videos(sv_dir, lv_dir, settings, "clip/segment")
    next_index = next_part_index(sv_dir)

    todo = [r for r in rows if r["status"] == schemas.OK and r["video_id"] not in done]
    log.info("segment: %d videos to segment (%d already done), n_segments=%s", len(todo), len(done),
             list(params.n_segments))
    per_part = int(c["segment"]["videos_per_part"])
    buffer: list[SegmentedVideo] = []
    failures: dict[str, str] = {}
    stats = {"candidates": 0, KEPT: 0, DROPPED_SMALL: 0, DROPPED_DUPLICATE: 0, DROPPED_SHORT: 0}
    seconds: list[float] = []
    progress = Progress("segment", len(todo))
    nodes: dict[str, int] = {}
    for result in map_tasks(segment_video, todo, spec, params, stage="segment", progress=progress, nodes=nodes,
                            label_selector=label_selector(c["ray"]["cpu_label_selector"])):
        if result.error:
            failures[result.video_id] = result.error
            log.warning("segment: %s failed: %s", result.video_id, result.error)
            continue
        seconds.append(result.seconds)
        status = result.table["status"]
        stats["candidates"] += len(status)
        for key in (KEPT, DROPPED_SMALL, DROPPED_DUPLICATE, DROPPED_SHORT):
            stats[key] += int((status == key).sum())
        buffer.append(result)
        if len(buffer) >= per_part:
            _write_segment_part(buffer, params, sv_dir, lv_dir, next_index, settings)
            next_index, buffer = next_index + 1, []
    if buffer:
        _write_segment_part(buffer, params, sv_dir, lv_dir, next_index, settings)
    _record_failures(rows, failures, "segment", run_dir, record)
    wall = time.monotonic() - t0
    segmented = len(todo) - len(failures)
    record["stages"]["segment"] = {
        "wall_s": round(wall, 3),
        "videos_segmented": segmented, "videos_skipped_done": len(done), "videos_failed": len(failures),
        "videos_per_s": round(segmented / wall, 3) if wall > 0 else None,
        "seconds_per_clip_in_task": round(float(np.mean(seconds)), 4) if seconds else None,
        "n_segments": list(params.n_segments),
        "supervoxels": stats,
        "kept_per_video": round(stats[KEPT] / segmented, 2) if segmented else None,
        "tasks_per_node": nodes,
    }
    if segmented or done:
        status = read_parts(sv_dir, columns=["status"]).column("status")
        record["counts"]["supervoxels_kept"] = int(pc.sum(pc.equal(status, KEPT)).as_py() or 0)


def _write_segment_part(results: list[SegmentedVideo], params: SegmentParams, sv_dir: str, lv_dir: str,
                        index: int, settings: str) -> None:
    """One part = the label volumes and the supervoxel table of a batch of videos. The
    supervoxel part is written last: its presence marks the batch as done."""
    lv_rows: dict[str, list] = {name: [] for name in schemas.LABEL_VOLUMES.names}
    sv_cols: dict[str, list] = {name: [] for name in schemas.SUPERVOXELS.names}
    for res in results:
        assert res.labels is not None
        for r in range(res.labels.shape[0]):
            lv_rows["video_id"].append(res.video_id)
            lv_rows["resolution"].append(r)
            lv_rows["n_segments"].append(params.n_segments[r])
            lv_rows["shape"].append(list(res.labels.shape[1:]))
            lv_rows["labels"].append(np.ascontiguousarray(res.labels[r], dtype=np.uint16).tobytes())
        n = len(res.table["supervoxel_id"])
        sv_cols["video_id"].append(np.full(n, res.video_id, dtype=object))
        sv_cols["n_segments"].append(np.asarray(params.n_segments, dtype=np.int32)[res.table["resolution"]])
        for name in schemas.SUPERVOXELS.names:
            if name not in ("video_id", "n_segments"):
                sv_cols[name].append(res.table[name])
    meta = {"settings": settings}
    write_part(pa.table(lv_rows, schema=schemas.LABEL_VOLUMES), lv_dir, index, meta)
    sv_table = pa.table({k: pa.array(np.concatenate(v), type=schemas.SUPERVOXELS.field(k).type)
                         for k, v in sv_cols.items()}, schema=schemas.SUPERVOXELS)
    write_part(sv_table, sv_dir, index, meta)


@contextlib.contextmanager
def _actor_pool(c: dict[str, Any], params: ActivateParams) -> Iterator[list[Any]]:
    """The model actors for a stage, gone when it ends (or fails)."""
    a = c["activate"]
    actors = start_actors(c["model"], c["clip"], params, a["num_actors"], int(a["cpus_per_actor"]),
                          int(a["torch_threads"]))
    try:
        yield actors
    finally:
        for actor in actors:
            ray.kill(actor)


def _bf16(described: list[dict[str, Any]]) -> bool | str:
    """Whether the actors run bf16: true, false, or "mixed"."""
    kinds = {bool(d["bf16"]) for d in described}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def _activate_params(c: dict[str, Any], gradients: bool, measure_batch: bool) -> ActivateParams:
    a = c["activate"]
    return ActivateParams(int(a["batch_size"]), float(a["fill"]), a["resampling"], a["autocast"], gradients,
                          measure_batch, pad_short=c["segment"]["short_supervoxels"] == "pad",
                          channels_last=a["channels_last"])


def stage_activate(c: dict[str, Any], run_dir: str, record: dict[str, Any]) -> None:
    """Steps 3-4: vectors of every kept supervoxel and every whole clip, logits, and class-logit
    gradients, from model actors; a rerun skips what is done."""
    t0 = time.monotonic()
    rows = io.read_table(os.path.join(run_dir, "videos.parquet")).to_pylist()
    ok = {r["video_id"]: r for r in rows if r["status"] == schemas.OK}
    a = c["activate"]
    params = _activate_params(c, gradients=bool(a["gradients"]), measure_batch=bool(a["measure_batch"]))
    sv_dir, lv_dir = os.path.join(run_dir, "supervoxels"), os.path.join(run_dir, "label_volumes")
    act_dir, pred_dir = os.path.join(run_dir, "activations"), os.path.join(run_dir, "predictions")
    settings = json.dumps({"clip": c["clip"], "segment": c["segment"], "activate": {k: v for k, v in a.items()
                           if k != "videos_per_part"}, "model": c["model"]}, sort_keys=True)
    done = _done_videos(pred_dir, act_dir, settings, "clip/segment/activate/model")
    next_index = next_part_index(pred_dir)

    box = ["supervoxel_id", "resolution", "label", "t0", "t1", "y0", "y1", "x0", "x1"]
    candidates = read_parts(sv_dir, columns=["video_id", "status", *box]).to_pandas()
    segmented = set(candidates.video_id)  # every segmented video has candidate rows, kept or not
    kept = candidates[candidates.status == KEPT]
    tables = {vid: {k: g[k].to_numpy() for k in box} for vid, g in kept.groupby("video_id", sort=False)}
    lv_parts = part_files(lv_dir)
    todo = [vid for vid in ok if vid in segmented and vid not in done]
    log.info("activate: %d videos to activate (%d already done), layers from model=%s", len(todo), len(done),
             c["model"]["name"])
    if not todo:
        record["stages"]["activate"] = {"wall_s": round(time.monotonic() - t0, 3), "videos_activated": 0,
                                        "videos_skipped_done": len(done)}
        return
    pool = contextlib.ExitStack()
    actors = pool.enter_context(_actor_pool(c, params))
    described = ray.get([actor.describe.remote() for actor in actors])
    bf16 = _bf16(described)
    log.info("activate: %d model actor(s) on %s, batch size %d, %s", len(actors),
             ", ".join(sorted({d["device"] for d in described})), described[0]["batch_size"],
             {True: "bf16", False: "float32"}.get(bf16, bf16))
    todo_set = set(todo)

    def work():
        for path in lv_parts:  # one label-volume part at a time: memory stays bounded
            part = [r for r in io.read_table(path).to_pylist() if r["video_id"] in todo_set]
            for vid, labels in stack_label_volumes(part).items():
                yield ok[vid], labels, tables.get(vid, {})

    per_part = int(a["videos_per_part"])
    buffer: list[VideoActivations] = []
    failures: dict[str, str] = {}
    stats = {"supervoxel_vectors": 0, "supervoxel_windows": 0, "clip_windows": 0, "actor_seconds": 0.0}
    progress = Progress("activate", len(todo))
    class_names = described[0]["class_names"]
    for result in run_on_actors(actors, work()):
        progress.update()
        if result.error:
            failures[result.video_id] = result.error
            log.warning("activate: %s failed: %s", result.video_id, result.error)
            continue
        stats["supervoxel_vectors"] += len(result.supervoxel_ids)
        stats["supervoxel_windows"] += int(result.supervoxel_windows.sum())
        stats["clip_windows"] += result.clip_windows
        stats["actor_seconds"] += result.seconds
        buffer.append(result)
        if len(buffer) >= per_part:
            _write_activation_part(buffer, ok, class_names, act_dir, pred_dir, next_index, settings)
            next_index, buffer = next_index + 1, []
    if buffer:
        _write_activation_part(buffer, ok, class_names, act_dir, pred_dir, next_index, settings)
    pool.close()
    _record_failures(rows, failures, "activate", run_dir, record)
    wall = time.monotonic() - t0
    activated = len(todo) - len(failures)
    windows = stats["supervoxel_windows"] + stats["clip_windows"]
    record["stages"]["activate"] = {
        "wall_s": round(wall, 3), "videos_activated": activated, "videos_skipped_done": len(done),
        "videos_failed": len(failures), "actors": len(actors), "devices": sorted({d["device"] for d in described}),
        "batch_size": described[0]["batch_size"], "bf16": bf16,
        "layers": described[0]["layers"],
        "batch_seconds_per_window": described[0]["batch_seconds_per_window"],
        "supervoxel_vectors": stats["supervoxel_vectors"], "windows": windows,
        "windows_per_s": round(windows / wall, 2) if wall > 0 else None,
        "actor_seconds_per_video": round(stats["actor_seconds"] / activated, 4) if activated else None,
        "actor_nodes": [d["node_id"] for d in described],
    }


def _done_videos(marker_dir: str, data_dir: str, settings: str, what: str) -> set[str]:
    """Videos whose results are complete: listed in a part of `marker_dir` (written last) made
    with the same settings. Parts of `data_dir` without their marker part are crash leftovers
    and are removed, so their videos are done again."""
    done: set[str] = set()
    markers = part_files(marker_dir)
    for path in markers:
        if part_metadata(path).get("settings") != settings:
            raise RunFolderError(f"{path} was made with other {what} settings; use a new run.output_dir "
                                 f"(or delete {marker_dir} and {data_dir})")
        done.update(io.read_table(path, columns=["video_id"]).column("video_id").unique().to_pylist())
    complete = {os.path.basename(p) for p in markers}
    for path in part_files(data_dir):
        if os.path.basename(path) not in complete:
            io.remove(path)
    return done


def _record_failures(rows: list[dict[str, Any]], failures: dict[str, str], stage: str, run_dir: str,
                     record: dict[str, Any]) -> None:
    """Mark videos that failed in `stage` in videos.parquet (they stay rows, with the reason)."""
    if not failures:
        return
    path = os.path.join(run_dir, "videos.parquet")
    settings = (io.read_schema(path).metadata or {}).get(b"settings", b"{}").decode()
    for r in rows:
        if r["video_id"] in failures:
            r.update(status=schemas.FAILED, error=failures[r["video_id"]], failed_stage=stage)
    write_videos(rows, run_dir, settings)
    record["counts"].update(videos_ok=sum(r["status"] == schemas.OK for r in rows),
                            videos_failed=sum(r["status"] == schemas.FAILED for r in rows))


def _write_activation_part(results: list[VideoActivations], videos: dict[str, dict[str, Any]],
                           class_names: list[str], act_dir: str, pred_dir: str, index: int, settings: str) -> None:
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
    meta = {"settings": settings}
    act_table = pa.table({k: _arrow_column(v, schemas.ACTIVATIONS.field(k).type) for k, v in act.items()},
                         schema=schemas.ACTIVATIONS)
    write_part(act_table, act_dir, index, meta)
    pred_table = pa.table({k: _arrow_column(v, schemas.PREDICTIONS.field(k).type) for k, v in pred.items()},
                          schema=schemas.PREDICTIONS)
    write_part(pred_table, pred_dir, index, meta)  # last: marks these videos done


def _arrow_column(values: list, type_: pa.DataType) -> pa.Array:
    if pa.types.is_list(type_):
        return pa.array([None if v is None else np.asarray(v, dtype=np.float32) for v in values], type=type_)
    return pa.array(values, type=type_)


def stage_concepts(c: dict[str, Any], run_dir: str, record: dict[str, Any]) -> None:
    """Steps 5-8 for every class the model knows and every explained layer, as Ray tasks; a
    reduction of the activations, recomputed on every run."""
    from scipy.stats import binomtest

    t0 = time.monotonic()
    cc = c["concepts"]
    params = ExplainParams(**{name: cc[name] for name in ExplainParams.__dataclass_fields__})
    pred = read_parts(os.path.join(run_dir, "predictions")).to_pandas()
    # Sorted: the concepts do not depend on how the activations were split into parts (a
    # resumed run writes other parts than an uninterrupted one).
    act = read_parts(os.path.join(run_dir, "activations")).to_pandas()
    layers = list(dict.fromkeys(act.layer))  # the model's order, as the actors wrote them
    act = act.sort_values(["layer", "video_id", "supervoxel_id"], kind="stable").reset_index(drop=True)
    videos = {r["video_id"]: r for r in io.read_table(os.path.join(run_dir, "videos.parquet")).to_pylist()}
    num_model_classes = int(len(pred.logits.iloc[0]))
    known = pred[pred.label_index >= 0]
    classes = sorted(known.label.unique())
    pool_ids = {k: sorted(pred.video_id[pred.label != k]) for k in classes}
    clip_rows = act[act.supervoxel_id == -1].set_index(["layer", "video_id"])
    sv_rows = act[act.supervoxel_id >= 0]

    tasks, meta = [], []
    explain = ray.remote(num_cpus=1)(explain_class_layer)
    class_info: dict[str, dict[str, Any]] = {}
    splits: dict[str, tuple[list[str], list[str], list[np.ndarray]]] = {}
    for k in classes:
        ids = sorted(known.video_id[known.label == k])
        discovery, scoring = split_videos(ids, cc["discovery_fraction"], cc["seed"])
        scored = known.set_index("video_id").loc[scoring]
        accuracy = float(scored.correct.mean()) if len(scored) else float("nan")
        chance = 1.0 / num_model_classes
        recognised = bool(len(scored)) and binomtest(int(scored.correct.sum()), len(scored), chance,
                                                     alternative="greater").pvalue <= 0.05
        pool = pool_ids[k]
        sets = draw_random_sets(np.array(pool), cc["num_random_exp"] + 1, cc["random_set_size"], cc["seed"])
        splits[k] = (discovery, scoring, sets)
        class_info[k] = {"discovery_videos": len(discovery), "scoring_videos": len(scoring),
                         "scoring_accuracy": accuracy, "chance": chance, "recognised": recognised,
                         "random_pool_videos": len(pool), "random_set_size": int(len(sets[0])) if sets else 0}
        if not recognised:
            log.warning("concepts: the model does not recognise class %r (accuracy %.2f on %d scoring videos, chance "
                        "%.2f): its concepts say little about the model", k, accuracy, len(scoring), chance)
    randomised: dict[tuple[str, str], np.ndarray] = {}
    if cc["randomisation_check"]:
        randomised = _randomised_gradients(c, videos, [v for k in classes for v in splits[k][1]], layers)
    for k in classes:
        discovery, scoring, sets = splits[k]
        pool = pool_ids[k]
        for layer in layers:
            sv = sv_rows[(sv_rows.layer == layer) & sv_rows.video_id.isin(discovery)]
            grads = clip_rows.loc[layer].loc[scoring]
            grads = np.stack(grads.gradient[grads.gradient_class == known.label_index[known.label == k].iloc[0]])
            pool_vectors = np.stack(clip_rows.loc[layer].loc[pool].vector)
            sc = sv_rows[(sv_rows.layer == layer) & sv_rows.video_id.isin(scoring)]
            rand = np.stack([randomised[(v, layer)] for v in scoring]) if randomised else None
            tasks.append(explain.remote(k, layer, np.stack(sv.vector), list(sv.video_id), list(sv.supervoxel_id),
                                        len(discovery), grads, [pool_vectors[i] for i in sets[:-1]],
                                        pool_vectors[sets[-1]], params,
                                        np.stack(sc.vector) if len(sc) else None, list(sc.video_id),
                                        list(sc.supervoxel_id), rand))
            meta.append((k, layer))
    progress = Progress("concepts", len(tasks), unit="(class, layer) pairs")
    results: dict[tuple[str, str], dict[str, Any]] = {}
    pending = dict(zip(tasks, meta))
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            results[pending.pop(ref)] = ray.get(ref)
            progress.update()

    concepts, members, tcav, importance = [], [], [], []
    shapes = {vid: [len(r["clip_frame_indices"]), r["clip_height"], r["clip_width"]]
              for vid, r in videos.items() if r["status"] == schemas.OK}
    for (k, layer) in meta:
        res = results[(k, layer)]
        for note in res["notes"]:
            log.warning("concepts: %s/%s: %s", k, layer, note)
        for row in res["concepts"]:
            row.update(class_accuracy=class_info[k]["scoring_accuracy"], class_recognised=class_info[k]["recognised"])
        concepts += res["concepts"]
        members += res["members"]
        tcav += res["tcav"]
        by_video: dict[str, list[dict[str, Any]]] = {}
        for row in res["supervoxel_scores"]:
            by_video.setdefault(row["video_id"], []).append(row)
        for vid, rows_ in by_video.items():
            importance.append({"video_id": vid, "target_class": k, "layer": layer, "shape": shapes[vid],
                               "encoding": "supervoxel_scores", "supervoxel_ids": [r["supervoxel_id"] for r in rows_],
                               "concepts": [r["concept"] for r in rows_], "scores": [r["score"] for r in rows_]})
        info = class_info[k].setdefault("layers", {})
        info[layer] = {"k": res["k"], "concepts": len(res["concepts"]), "random_baseline_mean": res["random_mean"],
                       "significant": sum(r["significant"] for r in res["concepts"]), "notes": res["notes"]}
        if res["randomisation"] is not None:
            check = dict(res["randomisation"])
            for row, after in zip(res["concepts"], check.pop("tcav_mean_after")):
                row["tcav_mean_randomised"] = after
            info[layer]["randomisation"] = check
    write_table(pa.Table.from_pylist(concepts, schema=schemas.CONCEPTS), os.path.join(run_dir, "concepts.parquet"))
    write_table(pa.Table.from_pylist(members, schema=schemas.CONCEPT_MEMBERS),
                os.path.join(run_dir, "concept_members.parquet"))
    write_table(pa.Table.from_pylist(tcav, schema=schemas.TCAV), os.path.join(run_dir, "tcav.parquet"))
    write_table(pa.Table.from_pylist(importance, schema=schemas.VOXEL_IMPORTANCE),
                os.path.join(run_dir, "voxel_importance", "part-00000.parquet"))
    if c["dataset"]["kind"] == "synthetic":
        _ground_truth_report(c, run_dir, videos, concepts, members, importance, class_info)
    record["stages"]["concepts"] = {"wall_s": round(time.monotonic() - t0, 3), "pairs": len(tasks),
                                    "classes": class_info}
    record["counts"].update(concepts_found=len(concepts),
                            concepts_significant=sum(r["significant"] for r in concepts))
    record["concept_table"] = _concept_table(concepts, class_info)


def _randomised_gradients(c: dict[str, Any], videos: dict[str, dict[str, Any]], video_ids: list[str],
                          layers: list[str]) -> dict[tuple[str, str], np.ndarray]:
    """The model-randomisation check's gradients: for every scoring video and layer, the
    class-logit gradient from the model with every weight after that layer re-initialised,
    computed by model actors. Returns {(video_id, layer): vector}."""
    seed = int(c["concepts"]["seed"])
    progress = Progress("randomisation check", len(video_ids))
    out: dict[tuple[str, str], np.ndarray] = {}
    with _actor_pool(c, _activate_params(c, gradients=True, measure_batch=False)) as actors:
        work = ((v, (videos[v], layers, seed)) for v in video_ids)
        for vid, res in call_actors(actors, "randomised_gradients", work):
            progress.update()
            _checked("randomisation check", vid, res)
            for layer in layers:
                out[(vid, layer)] = np.asarray(res[layer])
    return out


def _ground_truth_report(c: dict[str, Any], run_dir: str, videos: dict[str, dict[str, Any]],
                         concepts: list[dict[str, Any]],
                         members: list[dict[str, Any]], importance: list[dict[str, Any]],
                         class_info: dict[str, dict[str, Any]], dilation: int = 3) -> None:
    """On the synthetic corpus, measure the explanation against the actor's voxels: per class
    and layer, the concept whose members lie most inside the actor tube (the "actor concept")
    with its TCAV rank and p-value, and the share of positive voxel-importance mass inside the
    tube. Reported, never used to change a score."""
    from pipeline.evaluation.ground_truth import inside_fraction, positive_mass_inside, video_actor_tube
    from pipeline.io import load_label_volumes
    from pipeline.scoring.voxel_importance import importance_map
    from pipeline.segmentation.supervoxels import supervoxel_mask

    needed = sorted({m["video_id"] for m in members} | {r["video_id"] for r in importance})
    volumes = load_label_volumes(run_dir, needed)  # every label volume needed, in one read
    tubes: dict[str, np.ndarray] = {}

    def tube(vid: str) -> np.ndarray:
        if vid not in tubes:
            tubes[vid] = video_actor_tube(c["dataset"]["root"], videos[vid], dilation)
        return tubes[vid]

    fractions: dict[str, list[float]] = {}
    for m in members:
        fractions.setdefault(m["concept"], []).append(
            inside_fraction(supervoxel_mask(volumes[m["video_id"]], m["supervoxel_id"]), tube(m["video_id"])))
    for k, info in class_info.items():
        for layer, li in info.get("layers", {}).items():
            rows = [r for r in concepts if r["target_class"] == k and r["layer"] == layer]
            gt: dict[str, Any] = {"dilation_px": dilation}
            if rows:
                best = max(rows, key=lambda r: np.mean(fractions[r["concept"]]))
                gt.update(actor_concept=best["concept"], actor_fraction=round(float(np.mean(fractions[best["concept"]])), 3),
                          actor_concept_rank=best["rank"], actor_concept_tcav=best["tcav_mean"],
                          actor_concept_p_value=best["p_value"], actor_concept_significant=best["significant"],
                          concepts_mostly_on_actor=sum(np.mean(fractions[r["concept"]]) >= 0.5 for r in rows))
            shares = [positive_mass_inside(importance_map(volumes[r["video_id"]], r["supervoxel_ids"], r["scores"]),
                                           tube(r["video_id"]))
                      for r in importance if r["target_class"] == k and r["layer"] == layer]
            shares = [s for s in shares if not np.isnan(s)]
            gt["importance_mass_in_actor_tube"] = round(float(np.mean(shares)), 3) if shares else None
            gt["actor_tube_volume_share"] = round(float(np.mean([tube(r["video_id"]).mean() for r in importance
                                                                  if r["target_class"] == k and r["layer"] == layer]
                                                                 or [np.nan])), 3)
            li["ground_truth"] = gt


def _concept_table(concepts: list[dict[str, Any]], class_info: dict[str, dict[str, Any]], top: int = 3) -> list[str]:
    """The short per-class table the job prints: top concepts by mean TCAV score."""
    lines = []
    for k, info in class_info.items():
        flag = "" if info["recognised"] else "  << the model does not recognise this class"
        lines.append(f"{k}: model accuracy {info['scoring_accuracy']:.2f} on {info['scoring_videos']} scoring videos"
                     f"{flag}")
        for layer, li in info.get("layers", {}).items():
            rows = sorted((r for r in concepts if r["target_class"] == k and r["layer"] == layer),
                          key=lambda r: r["rank"])
            lines.append(f"  {layer}: {li['concepts']} concepts, {li['significant']} significant "
                         f"(random baseline {li['random_baseline_mean']:.2f})")
            gt = li.get("ground_truth")
            if gt and "actor_concept" in gt:
                lines.append(f"    ground truth: actor concept {gt['actor_concept'].rsplit('/', 1)[-1]} "
                             f"({gt['actor_fraction']:.2f} of its voxels on the actor) is #{gt['actor_concept_rank']}, "
                             f"TCAV {gt['actor_concept_tcav']:.2f}, p={gt['actor_concept_p_value']:.1e}; "
                             f"importance mass on the actor {gt['importance_mass_in_actor_tube']} "
                             f"(the tube is {gt['actor_tube_volume_share']} of the volume)")
            rc = li.get("randomisation")
            if rc:
                lines.append(f"    randomisation check (weights after {layer} re-initialised): ranking Spearman "
                             f"{rc['spearman']:.2f}, mean |TCAV change| {rc['mean_abs_change']:.2f}, "
                             f"{rc['significance_changed']} significance decisions changed "
                             f"({rc['significant_before']} -> {rc['significant_after']} significant)")
            for r in rows[:top]:
                lines.append(f"    #{r['rank']} {r['concept'].rsplit('/', 1)[-1]:<10} TCAV {r['tcav_mean']:.2f} "
                             f"+- {r['tcav_std']:.2f}  p={r['p_value']:.1e}{' *' if r['significant'] else '  '}  "
                             f"size {r['size']} from {r['num_videos']} videos")
    return lines


def _checked(label: str, vid: str, res: Any) -> Any:
    """An actor's result, or the stage stops naming the video: a dead actor's `RayError`, or
    the `{"error": reason}` an actor method returns."""
    if isinstance(res, Exception) or "error" in res:
        raise RuntimeError(f"{label}: video {vid!r}: {res if isinstance(res, Exception) else res['error']}")
    return res


def _run_plans(c: dict[str, Any], run_dir: str, videos: dict[str, dict[str, Any]],
               work: dict[str, tuple[dict[str, Any], dict[str, list[Any]]]], label: str) -> dict[str, dict[str, Any]]:
    """Every video's plans on the model actors: {video_id: {layer: {"prob", "correct"}}}.
    work[video] = (assignments per layer, plans per layer). Label volumes are read one part at
    a time (memory stays bounded) and each video's travel with it."""
    fill = float(c["activate"]["fill"])

    def items():
        for path in part_files(os.path.join(run_dir, "label_volumes")):
            part = [r for r in io.read_table(path).to_pylist() if r["video_id"] in work]
            for vid, labels in stack_label_volumes(part).items():
                yield vid, (videos[vid], labels, *work[vid], fill)

    results: dict[str, dict[str, Any]] = {}
    progress = Progress(label, len(work))
    with _actor_pool(c, _activate_params(c, gradients=False, measure_batch=False)) as actors:
        for vid, res in call_actors(actors, "evaluate", items()):
            results[vid] = _checked(label, vid, res)
            progress.update()
    missing = sorted(set(work) - set(results))
    if missing:
        raise RuntimeError(f"{label}: no label volumes for {len(missing)} videos, e.g. {missing[:3]}")
    return results


def stage_evaluate(c: dict[str, Any], run_dir: str, record: dict[str, Any]) -> None:
    """Method step 10 on every class's scoring videos, per layer: causal concept importance
    (the drop in class probability when one concept's voxels are mean-filled), then deletion
    and insertion curves with concepts in TCAV order (the paper's) and in causal order, against
    bottom-first and random orders, with their areas. Writes evaluation.parquet, adds
    causal_importance to concepts.parquet, records TCAV/causal rank correlations in run.json."""
    from scipy.stats import spearmanr

    from pipeline.evaluation.deletion import DELETE, INSERT, Plan, auc, curve_plans, orderings

    t0 = time.monotonic()
    ev = c["evaluate"]
    for needed in ("concepts.parquet", "voxel_importance"):
        if not io.exists(os.path.join(run_dir, needed)):
            raise RunFolderError(f"the evaluate stage needs {needed} in {run_dir}: run the concepts stage first "
                                 "(run.stages=[...,concepts,evaluate])")
    concepts = io.read_table(os.path.join(run_dir, "concepts.parquet")).to_pylist()
    vi = read_parts(os.path.join(run_dir, "voxel_importance")).to_pylist()
    videos = {r["video_id"]: r for r in io.read_table(os.path.join(run_dir, "videos.parquet")).to_pylist()}
    ranked: dict[tuple[str, str], list[str]] = {}
    for row in sorted(concepts, key=lambda r: r["rank"]):
        ranked.setdefault((row["target_class"], row["layer"]), []).append(row["concept"])
    # Each scoring video, scored for its own class: its supervoxels' concepts per layer.
    assignments: dict[str, dict[str, tuple[list[int], list[Optional[str]]]]] = {}
    for row in vi:
        if videos[row["video_id"]]["label"] == row["target_class"] and (row["target_class"], row["layer"]) in ranked:
            assignments.setdefault(row["video_id"], {})[row["layer"]] = (row["supervoxel_ids"], row["concepts"])
    if not assignments:
        log.warning("evaluate: no scoring video has concepts to remove; nothing to evaluate")
        record["stages"]["evaluate"] = {"wall_s": round(time.monotonic() - t0, 3), "videos": 0}
        return

    def key(vid: str, layer: str) -> tuple[str, str]:
        return videos[vid]["label"], layer

    # Pass 1: causal importance, one concept removed at a time.
    single = {vid: (a, {layer: [Plan(DELETE, frozenset())] + [Plan(DELETE, frozenset([cn]))
                                                                for cn in ranked[key(vid, layer)]]
                        for layer in a}) for vid, a in assignments.items()}
    first = _run_plans(c, run_dir, videos, single, "evaluate (causal importance)")
    drops: dict[str, list[float]] = {}
    correct_without: dict[str, list[float]] = {}  # per video, correct with this concept removed
    for vid, res in first.items():
        for layer, r in res.items():
            for cn, p, ok in zip(ranked[key(vid, layer)], r["prob"][1:], r["correct"][1:]):
                drops.setdefault(cn, []).append(r["prob"][0] - p)
                correct_without.setdefault(cn, []).append(float(ok))
    causal = {cn: float(np.mean(v)) for cn, v in drops.items()}
    by_causal = {kl: sorted(names, key=lambda cn: (-causal.get(cn, 0.0), names.index(cn)))
                 for kl, names in ranked.items()}

    # Pass 2: the curves, both rankings, every order, both modes; identical plans run once.
    max_k, draws = int(ev["max_k"]), int(ev["random_draws"])
    curves: dict[tuple[str, str], list[tuple[str, str, str, list[Plan]]]] = {}
    for kl in ranked:
        for ranking, order_base in (("tcav", ranked[kl]), ("causal", by_causal[kl])):
            for order, names in orderings(order_base, draws, int(ev["seed"])).items():
                for mode in (DELETE, INSERT):
                    curves.setdefault(kl, []).append((ranking, order, mode, curve_plans(names[:max_k], mode)))
    work, known = {}, {}
    for vid, a in assignments.items():
        known[vid] = {layer: dict(zip(single[vid][1][layer], zip(first[vid][layer]["prob"], first[vid][layer]["correct"])))
                      for layer in a}  # pass 1's plans are not run again
        plans = {layer: [p for p in dict.fromkeys(p for *_, ps in curves[key(vid, layer)] for p in ps)
                         if p not in known[vid][layer]] for layer in a}
        work[vid] = (a, plans)
    second = _run_plans(c, run_dir, videos, work, "evaluate (deletion/insertion)")

    tcav_mean = {r["concept"]: r["tcav_mean"] for r in concepts}
    rows: list[dict[str, Any]] = []
    summary: dict[str, dict[str, Any]] = {}
    for (k, layer), curve_list in curves.items():
        vids = [v for v in second if videos[v]["label"] == k and layer in second[v]]
        if not vids:
            continue
        lookup = {v: {**known[v][layer],
                      **dict(zip(work[v][1][layer], zip(second[v][layer]["prob"], second[v][layer]["correct"])))}
                  for v in vids}
        points: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
        for ranking, order, mode, plans in curve_list:
            name = "random" if order.startswith("random") else order
            acc = [float(np.mean([lookup[v][p][1] for v in vids])) for p in plans]
            prob = [float(np.mean([lookup[v][p][0] for v in vids])) for p in plans]
            points.setdefault((ranking, mode, name), []).append((acc, prob))
        accuracy: dict[tuple[str, str, str], np.ndarray] = {}  # (ranking, mode, order) -> accuracy at each k
        areas: dict[tuple[str, str, str], float] = {}
        for (ranking, mode, order), draws_ in points.items():
            acc = np.mean([d[0] for d in draws_], axis=0)
            prob = np.mean([d[1] for d in draws_], axis=0)
            accuracy[(ranking, mode, order)], areas[(ranking, mode, order)] = acc, auc(acc)
            for kk, (a_, p_) in enumerate(zip(acc, prob)):
                rows.append({"target_class": k, "layer": layer, "ranking": ranking, "mode": mode, "order": order,
                             "kind": "point", "k": kk, "accuracy": float(a_), "mean_prob": float(p_),
                             "n_videos": len(vids)})
            rows.append({"target_class": k, "layer": layer, "ranking": ranking, "mode": mode, "order": order,
                         "kind": "auc", "k": None, "accuracy": auc(acc), "mean_prob": auc(prob), "n_videos": len(vids)})
        names = ranked[(k, layer)]
        tcav_means = [tcav_mean[cn] for cn in names]
        rho = float("nan")
        if len(names) >= 2 and np.ptp(tcav_means) > 0 and np.ptp([causal.get(cn, 0.0) for cn in names]) > 0:
            rho = float(spearmanr(tcav_means, [causal.get(cn, 0.0) for cn in names]).statistic)
        # "a random concept" at k = 1: the exact expectation, i.e. the mean accuracy over the
        # class's videos with each of its concepts removed in turn (pass 1), not the draws
        removed = [correct_without[cn] for cn in names if cn in correct_without]
        random_top1 = float(np.mean(np.concatenate(removed)))
        # the most any ordering can get at k = 1 on these videos: the concept whose removal
        # costs the most accuracy (in-sample, so an upper bound, not a ranking to use)
        best_top1 = round(random_top1 - min(float(np.mean(v)) for v in removed), 4)

        def at_k1(ranking: str, order: str) -> Optional[float]:
            curve = accuracy.get((ranking, DELETE, order))
            return None if curve is None or len(curve) < 2 else float(curve[1])

        def top1_drop(ranking: str, baseline: Optional[float]) -> Optional[float]:
            top = at_k1(ranking, "top")
            return None if top is None or baseline is None else round(baseline - top, 4)

        # the model's answer for a wholly mean-filled clip (insertion at k = 0): a class it
        # predicts there can hardly lose accuracy when concepts are deleted (deleting every
        # concept still leaves the unassigned supervoxels, but little else)
        empty = accuracy.get(("tcav", INSERT, "top"))
        empty_accuracy = None if empty is None else round(float(empty[0]), 4)
        if empty_accuracy is not None and empty_accuracy >= 0.5:
            log.warning("evaluate: %s/%s: the model predicts %r for %.0f%% of its wholly mean-filled scoring clips, so "
                        "deleting concepts can hardly take the class away: its deletion figures say little", k, layer,
                        k, 100 * empty_accuracy)
        summary.setdefault(k, {})[layer] = {
            "spearman_tcav_causal": rho, "videos": len(vids),
            "mean_filled_clip_accuracy": empty_accuracy,
            "random_top1_deletion_accuracy": round(random_top1, 4),
            "best_single_concept_top1_deletion_accuracy_drop_vs_random": best_top1,
            **{f"{ranking}_{what}": value for ranking in ("tcav", "causal") for what, value in (
                ("top1_deletion_accuracy_drop_vs_random", top1_drop(ranking, random_top1)),
                ("top1_deletion_accuracy_drop_vs_random_draws", top1_drop(ranking, at_k1(ranking, "random"))),
                ("deletion_auc_top", areas.get((ranking, DELETE, "top"))),
                ("deletion_auc_bottom", areas.get((ranking, DELETE, "bottom"))),
                ("insertion_auc_top", areas.get((ranking, INSERT, "top"))),
                ("insertion_auc_bottom", areas.get((ranking, INSERT, "bottom"))))},
        }
    write_table(pa.Table.from_pylist(rows, schema=schemas.EVALUATION), os.path.join(run_dir, "evaluation.parquet"))
    for row in concepts:
        row["causal_importance"] = causal.get(row["concept"])
    write_table(pa.Table.from_pylist(concepts, schema=schemas.CONCEPTS), os.path.join(run_dir, "concepts.parquet"))
    record["stages"]["evaluate"] = {"wall_s": round(time.monotonic() - t0, 3), "videos": len(assignments),
                                    "plans": sum(len(p) for w in (single, work) for _, pl in w.values()
                                                 for p in pl.values()),
                                    "classes": summary}
    if c["dataset"]["kind"] == "synthetic":
        _causal_mass_report(c, run_dir, videos, vi, causal, summary)
    record["evaluation_table"] = _evaluation_table(summary)


def _causal_mass_report(c: dict[str, Any], run_dir: str, videos: dict[str, dict[str, Any]],
                        vi: list[dict[str, Any]], causal: dict[str, float], summary: dict[str, dict[str, Any]],
                        dilation: int = 3) -> None:
    """On the synthetic corpus: the share of positive voxel-importance mass inside the dilated
    actor tube, with concepts scored by causal importance and (beside it) by TCAV."""
    from pipeline.evaluation.ground_truth import positive_mass_inside, video_actor_tube
    from pipeline.io import load_label_volumes
    from pipeline.scoring.voxel_importance import causal_scores, importance_map
    from pipeline.segmentation.supervoxels import split_supervoxel_id

    rows = [r for r in vi if videos[r["video_id"]]["label"] == r["target_class"]]
    volumes = load_label_volumes(run_dir, sorted({r["video_id"] for r in rows}))
    tubes = {vid: video_actor_tube(c["dataset"]["root"], videos[vid], dilation) for vid in volumes}
    # each supervoxel's own share of voxels inside the tube (per resolution, one bincount)
    share_of: dict[str, list[np.ndarray]] = {
        vid: [np.bincount(lab.ravel(), weights=tubes[vid].ravel(), minlength=int(lab.max()) + 1)
              / np.maximum(np.bincount(lab.ravel(), minlength=int(lab.max()) + 1), 1) for lab in labels]
        for vid, labels in volumes.items()}

    def own_share(vid: str, sid: int) -> float:
        resolution, label = split_supervoxel_id(int(sid))
        return float(share_of[vid][resolution][label])

    concept_share: dict[str, list[float]] = {}
    for r in rows:
        for sid, cn in zip(r["supervoxel_ids"], r["concepts"]):
            if cn is not None:
                concept_share.setdefault(cn, []).append(own_share(r["video_id"], sid))
    on_actor = {cn: float(np.mean(v)) >= 0.5 for cn, v in concept_share.items()}
    shares: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in rows:
        vid, labels = r["video_id"], volumes[r["video_id"]]
        scores = {
            "causal": causal_scores(r["concepts"], causal),
            "tcav": r["scores"],
            # two reference scorings from the ground truth, for scale: every supervoxel scored by its
            # own share of actor voxels; every concept scored 1 if its supervoxels lie mostly on
            # the actor, else 0
            "oracle_supervoxel_share": [own_share(vid, sid) for sid in r["supervoxel_ids"]],
            "oracle_actor_concepts": [float(on_actor.get(cn, False)) if cn is not None else 0.0
                                      for cn in r["concepts"]],
        }
        for name, values in scores.items():
            share = positive_mass_inside(importance_map(labels, r["supervoxel_ids"], values), tubes[vid])
            if not np.isnan(share):
                shares.setdefault((r["target_class"], r["layer"]), {}).setdefault(name, []).append(share)
    for (k, layer), by_score in shares.items():
        if k in summary and layer in summary[k]:
            for name, values in by_score.items():
                summary[k][layer][f"importance_mass_in_actor_tube_{name}"] = round(float(np.mean(values)), 3)


def _evaluation_table(summary: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for k, layers in summary.items():
        for layer, s in layers.items():
            def drop(name: str) -> str:
                v = s.get(name)
                return "n/a" if v is None else f"{v:.2f}"

            lines.append(f"{k}/{layer}: TCAV-causal Spearman {s['spearman_tcav_causal']:.2f}; top-1 deletion lowers "
                         f"accuracy by {drop('causal_top1_deletion_accuracy_drop_vs_random')} more than a random "
                         f"concept (causal order; TCAV order {drop('tcav_top1_deletion_accuracy_drop_vs_random')}; "
                         f"at most {drop('best_single_concept_top1_deletion_accuracy_drop_vs_random')} for any "
                         "single concept); "
                         f"deletion AUC top/bottom {s['causal_deletion_auc_top']:.2f}/{s['causal_deletion_auc_bottom']:.2f} "
                         f"(TCAV order {s['tcav_deletion_auc_top']:.2f}/{s['tcav_deletion_auc_bottom']:.2f})"
                         + (f"; the model predicts the class for {s['mean_filled_clip_accuracy']:.2f} of its wholly "
                            "mean-filled clips, so deletion can hardly take it away"
                            if (s.get("mean_filled_clip_accuracy") or 0) >= 0.5 else "")
                         + (f"; importance mass on the actor {s['importance_mass_in_actor_tube_causal']} causal, "
                            f"{s.get('importance_mass_in_actor_tube_tcav')} TCAV (ground-truth reference scorings: "
                            f"{s.get('importance_mass_in_actor_tube_oracle_supervoxel_share')} scoring supervoxels by "
                            f"their actor share, {s.get('importance_mass_in_actor_tube_oracle_actor_concepts')} scoring "
                            "actor concepts 1)"
                            if "importance_mass_in_actor_tube_causal" in s else ""))
    return lines


def stage_report(c: dict[str, Any], run_dir: str, record: dict[str, Any]) -> None:
    """report/index.html: concept cards with exemplar clips, curves, heat maps (pipeline.report);
    a Ray task renders each class."""
    from pipeline.report import build_report

    out = build_report(run_dir, c, record)
    record["stages"]["report"] = out
    log.info("report: %s (%d classes, %d images)", out["path"], out["classes"], out["assets"])


STAGE_FUNCTIONS = {"ingest": stage_ingest, "segment": stage_segment, "activate": stage_activate,
                   "concepts": stage_concepts, "evaluate": stage_evaluate, "report": stage_report}


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Validate, then run the configured stages; returns the run record (run.json)."""
    validate(cfg)
    absolutise(cfg)
    c = to_plain(cfg)
    run_dir = c["run"]["output_dir"]
    io.makedirs(run_dir)
    logging.getLogger("pipeline").setLevel(c["run"]["log_level"].upper())
    record: dict[str, Any] = {
        "run_dir": run_dir,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "finished": None,
        "command": " ".join(sys.argv),
        "config": c,
        "versions": versions(),
        "stages": {},
        "counts": {},
    }
    _keep_earlier_stages(record, os.path.join(run_dir, "run.json"), c["run"]["stages"])
    init_ray(c["ray"])
    check_label_selector(label_selector(c["ray"]["cpu_label_selector"]))
    t0 = time.monotonic()
    for stage in c["run"]["stages"]:
        STAGE_FUNCTIONS[stage](c, run_dir, record)
        write_json(record, os.path.join(run_dir, "run.json"))
    record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record["wall_s"] = round(time.monotonic() - t0, 3)
    write_json(record, os.path.join(run_dir, "run.json"))
    print_summary(record)
    return record


def _keep_earlier_stages(record: dict[str, Any], path: str, stages: list[str]) -> None:
    """A run of some stages keeps what run.json said about the stages before the first one it
    runs (their outputs are still in the folder, unchanged), marked with the run that made
    them; what later stages said is dropped, as it may no longer hold."""
    from pipeline.config import STAGES

    if not io.exists(path):
        return
    try:
        old = io.read_json(path)
    except (ValueError, OSError):
        return
    first = min(STAGES.index(s) for s in stages)
    for name, entry in (old.get("stages") or {}).items():
        if name in STAGES and STAGES.index(name) < first and isinstance(entry, dict):
            record["stages"][name] = {**entry, "from_run_started": entry.get("from_run_started", old.get("started"))}
    record["counts"] = {**(old.get("counts") or {}), **record["counts"]}
    if "concept_table" in old and first > STAGES.index("concepts"):
        record["concept_table"] = old["concept_table"]


def print_summary(record: dict[str, Any]) -> None:
    counts = record["counts"]
    print(f"\nrun folder: {record['run_dir']}")
    print(f"videos: {counts.get('videos_in', 0)} in, {counts.get('videos_ok', 0)} ok, "
          f"{counts.get('videos_failed', 0)} failed  (videos.parquet)")
    if "supervoxels_kept" in counts:
        print(f"supervoxels kept: {counts['supervoxels_kept']}  (supervoxels/, label_volumes/)")
    if "concepts_found" in counts:
        print(f"concepts: {counts['concepts_found']} found, {counts['concepts_significant']} significant "
              "(concepts.parquet, concept_members.parquet, tcav.parquet)")
        for line in record.get("concept_table", []):
            print("  " + line)
    if record["stages"].get("report", {}).get("path"):
        print(f"report: {record['stages']['report']['path']}")
    if record.get("evaluation_table"):
        print("evaluation (evaluation.parquet; concepts.parquet causal_importance):")
        for line in record["evaluation_table"]:
            print("  " + line)
    for name, s in record["stages"].items():
        print(f"  {name:<8} {s['wall_s']:8.1f} s" + ("  (an earlier run)" if "from_run_started" in s else ""))
    print(f"run record: {os.path.join(record['run_dir'], 'run.json')}", flush=True)


register_configs()


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run_job(cfg)
    except (ConfigError, RunFolderError, FileNotFoundError) as e:  # FileNotFoundError: a stage's input missing
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
