"""Ray actors that hold the model: one per GPU (or CPU actors where there is none), fed units
of work: a stage's function runs on the actor (`ModelActor.run`) with a few videos' rows and
where their label volumes are; it reads those, decodes the clips there, builds every patch on
the actor's device and writes its own parts.

`ModelActors` is a stage's pool: started once, used by every pass of the stage, killed when the
stage ends (or fails). A unit that raises becomes an `Outcome` with the reason
(`call_actors`, `ActorQueue`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable, Iterator, Optional

import ray

from pipeline.activations.extract import choose_batch_size, resolve_autocast
from pipeline.activations.params import ActivateParams
from pipeline.activations.patches import patch_spec
from pipeline.activations.video import pick_device, prepare_model
from pipeline.data.ingest import read_ingested_clip
from pipeline.data.video import ClipSpec
from pipeline.models.registry import load_model
from pipeline.orchestration.fanout import Outcome, call_actors



class ModelActor:
    """Loads the model once (`__init__`), then maps videos to vectors (`activate`), to
    randomised-model gradients (`randomised_gradients`) or to plan outcomes (`evaluate`)."""

    def __init__(self, model_cfg: dict[str, Any], clip_cfg: dict[str, Any], params: ActivateParams,
                 pad_short: bool, torch_threads: int, module: Any = None) -> None:
        import torch

        # Ray sets OMP_NUM_THREADS to the actor's CPUs; the stages run one after the other, so
        # a CPU actor may use the node's cores.
        torch.set_num_threads(torch_threads or len(os.sched_getaffinity(0)))
        self.device = pick_device(model_cfg.get("device", "auto"))
        self.model = prepare_model(load_model(model_cfg, module), self.device, channels_last=params.channels_last)
        self.clip_spec = ClipSpec(**clip_cfg)
        self.pad_short = pad_short
        self.batch_timings: dict[int, float] = {}
        bf16 = resolve_autocast(params.autocast, self.device)
        batch = params.batch_size or (32 if self.device.type == "cuda" else 4)
        if params.measure_batch:  # the fastest per window on this device, within its memory
            spec = patch_spec(self.model, params, pad_short)
            batch, self.batch_timings = choose_batch_size(self.model.module, spec, self.model.layers, self.device,
                                                          bf16)
        self.params = dataclasses.replace(params, batch_size=batch, measure_batch=False, autocast=bf16)
        self.spec = patch_spec(self.model, self.params, pad_short)
        self._randomised: dict[tuple[str, int], Any] = {}  # (layer, seed) -> randomised model copy

    def _class_index(self, row: dict[str, Any]) -> int:
        """The model's index of the video's label (a video scored for its own class)."""
        label = row.get("label")
        if label not in self.model.class_names:
            raise ValueError(f"label {label!r} is not one of the model's classes")
        return self.model.class_names.index(label)

    def describe(self) -> dict[str, Any]:
        ctx = ray.get_runtime_context()
        return {"device": str(self.device), "node_id": ctx.get_node_id(), "batch_size": self.params.batch_size,
                "bf16": bool(self.params.autocast),
                "batch_seconds_per_window": {str(k): round(v, 5) for k, v in self.batch_timings.items()},
                "class_names": list(self.model.class_names), "layers": list(self.model.layers)}

    def run(self, fn: Any, *args: Any) -> Any:
        """`fn(self, *args)`: a stage's unit of work on this actor (the stage's module defines it;
        it uses the model loaded here and writes its own parts)."""
        return fn(self, *args)

    def randomised_gradients(self, row: dict[str, Any], layers: list[str], seed: int) -> dict[str, Any]:
        """The video's class-logit gradient at each layer from a copy of the model whose every
        weight after that layer is re-initialised (the model-randomisation check): {layer: vector}."""
        import torch

        from pipeline.activations.extract import clip_outputs
        from pipeline.activations.video import to_device
        from pipeline.scoring.randomisation import randomised_copy

        k = self._class_index(row)
        t_clip = to_device(read_ingested_clip(row, self.clip_spec).frames, self.device)
        out: dict[str, Any] = {}
        for layer in layers:
            if (layer, seed) not in self._randomised:
                example = torch.zeros((1, 3, self.spec.window, self.spec.height, self.spec.width), device=self.device)
                self._randomised[(layer, seed)] = randomised_copy(self.model.module, layer, example, seed)[0]
            res = clip_outputs(self._randomised[(layer, seed)], t_clip, self.spec, [layer], k,
                               self.params.batch_size, self.params.autocast)
            out[layer] = res.gradients[layer]
        return out

    def evaluate(self, row: dict[str, Any], labels: Any, assignments: dict[str, tuple[list[int], list[Optional[str]]]],
                 plans: dict[str, list[Any]], fill: float, chunk: int = 16, clip: Any = None) -> dict[str, Any]:
        """The video's class probability and correctness under each plan (method step 10 and
        causal importance): `assignments[layer]` = (supervoxel ids, concept of each or None),
        `plans[layer]` = deletion / insertion plans (pipeline.evaluation.deletion.Plan).
        `clip`: its frames when already decoded. Returns {layer: {"prob": [...], "correct": [...]}}."""
        import numpy as np
        import torch

        from pipeline.activations.extract import clips_logits
        from pipeline.activations.video import to_device
        from pipeline.evaluation.deletion import apply_plan, concept_voxels

        k = self._class_index(row)
        clip = read_ingested_clip(row, self.clip_spec).frames if clip is None else clip
        out: dict[str, Any] = {}
        for layer, layer_plans in plans.items():
            voxels = concept_voxels(labels, *assignments[layer])
            probs, correct = [], []
            for start in range(0, len(layer_plans), chunk):
                clips = [to_device(apply_plan(clip, voxels, p, fill), self.device)
                         for p in layer_plans[start:start + chunk]]
                logits = clips_logits(self.model.module, clips, self.spec, self.params.batch_size, self.params.autocast)
                p = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
                probs += p[:, k].tolist()
                correct += (np.argmax(logits, axis=1) == k).tolist()
            out[layer] = {"prob": probs, "correct": correct}
        return out


class ModelActors:
    """A stage's fixed-size pool of model actors: one per GPU (num_gpus=1) when the cluster has
    GPUs, else `activate.num_actors` (default 1) CPU actors; killed when the `with` block ends.
    `described` holds each actor's `describe()` (device, batch size, precision, classes, layers)."""

    def __init__(self, c: dict[str, Any], params: ActivateParams, module: Any = None) -> None:
        self.c, self.params, self.module = c, params, module
        self.actors: list[Any] = []
        self.described: list[dict[str, Any]] = []

    def __enter__(self) -> "ModelActors":
        a = self.c["activate"]
        gpus = int(ray.cluster_resources().get("GPU", 0))
        remote = ray.remote(max_restarts=1, max_task_retries=1)(ModelActor)
        if gpus:
            n, options = a["num_actors"] or gpus, {"num_gpus": 1, "num_cpus": 1}
        else:
            n, options = a["num_actors"] or 1, {"num_cpus": int(a["cpus_per_actor"])}
        pad_short = self.c["segment"]["short_supervoxels"] == "pad"
        self.actors = [remote.options(**options).remote(self.c["model"], self.c["clip"], self.params, pad_short,
                                                        int(a["torch_threads"]), self.module) for _ in range(n)]
        try:
            self.described = ray.get([actor.describe.remote() for actor in self.actors])
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []

    def map_units(self, fn: Any, items: Iterable[tuple[Any, tuple]]) -> Iterator[Outcome]:
        """`fn(actor, *args)` on the actors for each (key, args) item (`ModelActor.run`), two
        units in flight per actor."""
        return call_actors(self.actors, "run", ((key, (fn, *args)) for key, args in items))

    @property
    def bf16(self) -> bool | str:
        """Whether the actors run bf16: True, False, or "mixed"."""
        kinds = {bool(d["bf16"]) for d in self.described}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    @property
    def devices(self) -> list[str]:
        return sorted({d["device"] for d in self.described})
