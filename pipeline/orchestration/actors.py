"""Ray actors that hold the model: one per GPU (or CPU actors where there is none), fed one
video at a time. Only the video's path, its label volumes and its supervoxel table travel to
an actor; the clip is decoded there and every patch is built on the actor's device."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Iterable, Iterator, Optional

import ray

from pipeline.activations.extract import choose_batch_size, resolve_autocast
from pipeline.activations.video import ActivateParams, VideoActivations, activate_video, pick_device, prepare_model
from pipeline.data.video import ClipSpec, read_clip
from pipeline.models.registry import load_model

log = logging.getLogger("pipeline")


class ModelActor:
    """Loads the model once (`__init__`), then `activate` maps a video to its vectors."""

    def __init__(self, model_cfg: dict[str, Any], clip_cfg: dict[str, Any], params: ActivateParams,
                 torch_threads: int) -> None:
        import torch

        # Ray sets OMP_NUM_THREADS to the actor's CPUs; the stages run one after the other, so
        # a CPU actor may use the node's cores.
        torch.set_num_threads(torch_threads or len(os.sched_getaffinity(0)))
        self.device = pick_device(model_cfg.get("device", "auto"))
        self.model = prepare_model(load_model(model_cfg), self.device, channels_last=params.channels_last)
        self.clip_spec = ClipSpec.from_config(clip_cfg)
        self.batch_timings: dict[int, float] = {}
        bf16 = resolve_autocast(params.autocast, self.device)
        batch = params.batch_size or (32 if self.device.type == "cuda" else 4)
        if params.measure_batch:  # the fastest per window on this device, within its memory
            spec = params.patch_spec(self.model)
            batch, self.batch_timings = choose_batch_size(self.model.module, spec, self.model.layers, self.device,
                                                          bf16)
        self.params = dataclasses.replace(params, batch_size=batch, measure_batch=False, autocast=bf16)
        self._randomised: dict[tuple[str, int], Any] = {}  # (layer, seed) -> randomised model copy

    def _clip(self, row: dict[str, Any]) -> Any:
        """The video's clip, checked against the frames ingestion recorded."""
        clip = read_clip(row["path"], self.clip_spec)
        if row.get("clip_frame_indices") is not None and list(clip.frame_indices) != list(row["clip_frame_indices"]):
            raise RuntimeError("the video changed since ingestion: its clip frame indices differ")
        return clip

    def _class_index(self, row: dict[str, Any]) -> int:
        """The model's index of the video's label (a video scored for its own class)."""
        label = row.get("label")
        if label not in self.model.class_names:
            raise ValueError(f"label {label!r} is not one of the model's classes")
        return self.model.class_names.index(label)

    def randomised_gradients(self, row: dict[str, Any], layers: list[str], seed: int) -> dict[str, Any]:
        """The video's class-logit gradient at each layer from a copy of the model whose every
        weight after that layer is re-initialised (the model-randomisation check). Returns
        {layer: vector} or {"error": reason}."""
        import torch

        from pipeline.activations.extract import clip_outputs
        from pipeline.activations.video import _to_device
        from pipeline.scoring.randomisation import randomised_copy

        try:
            k = self._class_index(row)
            spec = self.params.patch_spec(self.model)
            t_clip = _to_device(self._clip(row).frames, self.device)
            out: dict[str, Any] = {}
            for layer in layers:
                if (layer, seed) not in self._randomised:
                    example = torch.zeros((1, 3, spec.window, spec.height, spec.width), device=self.device)
                    self._randomised[(layer, seed)] = randomised_copy(self.model.module, layer, example, seed)[0]
                res = clip_outputs(self._randomised[(layer, seed)], t_clip, spec, [layer], k,
                                   self.params.batch_size, self.params.autocast)
                out[layer] = res.gradients[layer]
            return out
        except Exception as e:
            return {"error": f"{type(e).__name__}: {e}"}

    def evaluate(self, row: dict[str, Any], labels: Any, assignments: dict[str, tuple[list[int], list[Optional[str]]]],
                 plans: dict[str, list[Any]], fill: float, chunk: int = 16) -> dict[str, Any]:
        """The video's class probability and correctness under each plan (method step 10 and
        causal importance): `assignments[layer]` = (supervoxel ids, concept of each or None),
        `plans[layer]` = deletion / insertion plans (pipeline.evaluation.deletion.Plan).
        Returns {layer: {"prob": [...], "correct": [...]}} or {"error": reason}."""
        import numpy as np
        import torch

        from pipeline.activations.extract import clips_logits
        from pipeline.activations.video import _to_device
        from pipeline.evaluation.deletion import apply_plan, concept_voxels

        try:
            k = self._class_index(row)
            clip = self._clip(row).frames
            spec = self.params.patch_spec(self.model)
            out: dict[str, Any] = {}
            for layer, layer_plans in plans.items():
                voxels = concept_voxels(labels, *assignments[layer])
                probs, correct = [], []
                for start in range(0, len(layer_plans), chunk):
                    clips = [_to_device(apply_plan(clip, voxels, p, fill), self.device)
                             for p in layer_plans[start:start + chunk]]
                    logits = clips_logits(self.model.module, clips, spec, self.params.batch_size, self.params.autocast)
                    p = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
                    probs += p[:, k].tolist()
                    correct += (np.argmax(logits, axis=1) == k).tolist()
                out[layer] = {"prob": probs, "correct": correct}
            return out
        except Exception as e:
            return {"error": f"{type(e).__name__}: {e}"}

    def describe(self) -> dict[str, Any]:
        ctx = ray.get_runtime_context()
        return {"device": str(self.device), "node_id": ctx.get_node_id(), "batch_size": self.params.batch_size,
                "bf16": bool(self.params.autocast),
                "batch_seconds_per_window": {str(k): round(v, 5) for k, v in self.batch_timings.items()},
                "class_names": list(self.model.class_names), "layers": list(self.model.layers)}

    def activate(self, row: dict[str, Any], labels: Optional[Any], table: dict[str, Any]) -> VideoActivations:
        try:
            clip = self._clip(row)
            return activate_video(self.model, row["video_id"], clip.frames, labels, table, row.get("label"),
                                  self.params, self.device)
        except Exception as e:  # recorded as a failed video, the run goes on
            return VideoActivations(row["video_id"], error=f"activation failed: {type(e).__name__}: {e}")


def start_actors(model_cfg: dict[str, Any], clip_cfg: dict[str, Any], params: ActivateParams,
                 num_actors: Optional[int], cpus_per_actor: int, torch_threads: int) -> list[Any]:
    """A fixed-size pool: one actor per GPU (num_gpus=1) when the cluster has GPUs, else
    `num_actors` (default 1) CPU actors."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    remote = ray.remote(max_restarts=1, max_task_retries=1)(ModelActor)
    if gpus:
        n = num_actors or gpus
        options = {"num_gpus": 1, "num_cpus": 1}
    else:
        n = num_actors or 1
        options = {"num_cpus": cpus_per_actor}
    actors = [remote.options(**options).remote(model_cfg, clip_cfg, params, torch_threads) for _ in range(n)]
    return actors


def call_actors(actors: list[Any], method: str, work: Iterable[tuple[str, tuple]],
                per_actor: int = 2) -> Iterator[tuple[str, Any]]:
    """Call `actor.<method>(*args)` for each (key, args) item, at most `per_actor` calls in
    flight on each actor (so the next item is already queued while one runs), the least
    loaded actor first; yield (key, result) as they finish. When the actor dies the result
    is the `RayError`, not raised: the caller decides what a lost item means."""
    load = {i: 0 for i in range(len(actors))}
    pending: dict[ray.ObjectRef, tuple[int, str]] = {}
    items = iter(work)
    exhausted = False
    while True:
        while not exhausted and len(pending) < per_actor * len(actors):
            try:
                key, args = next(items)
            except StopIteration:
                exhausted = True
                break
            i = min(load, key=load.get)  # type: ignore[arg-type]
            pending[getattr(actors[i], method).remote(*args)] = (i, key)
            load[i] += 1
        if not pending:
            return
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            i, key = pending.pop(ref)
            load[i] -= 1
            try:
                yield key, ray.get(ref)
            except ray.exceptions.RayError as e:
                yield key, e


def run_on_actors(actors: list[Any], work: Iterable[tuple[dict[str, Any], Any, dict[str, Any]]],
                  per_actor: int = 2) -> Iterator[VideoActivations]:
    """Activate (row, labels, table) items on the actors; yield results as they finish. An
    actor that dies fails its videos with the reason; the others go on."""
    items = ((row["video_id"], (row, labels, table)) for row, labels, table in work)
    for video_id, result in call_actors(actors, "activate", items, per_actor):
        if isinstance(result, ray.exceptions.RayError):
            result = VideoActivations(video_id, error=f"activation failed: the model actor died: "
                                                      f"{type(result).__name__}")
        yield result
