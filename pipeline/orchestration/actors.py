"""Ray actors that hold the model: one per GPU (or CPU actors where there is none), fed units
of work: a stage's function runs on the actor (`ModelActor.run`) with a few videos' rows and
where their label volumes are; it reads those, decodes the clips there, builds every patch on
the actor's device and writes its own parts.

`ModelActors` is a stage's pool: started once, used by every pass of the stage, killed when the
stage ends (or fails). A unit that raises becomes an `Outcome` with the reason; a unit whose
actor was lost is retried on another (`ActorQueue`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional

import ray

from pipeline.activations.extract import choose_batch_size, resolve_autocast
from pipeline.activations.params import ActivateParams
from pipeline.activations.patches import patch_spec
from pipeline.activations.video import pick_device, prepare_model
from pipeline.data.video import ClipSpec, DecodeLimits
from pipeline.models.registry import load_model
from pipeline.orchestration.fanout import Outcome, describe_failure
from pipeline.orchestration.runtime import ResourceWaitError, a_node_fits, cluster_gpus, gpus_per_actor

if TYPE_CHECKING:
    from pipeline.config import ActivateConfig, Config

log = logging.getLogger("pipeline")

# Once a node can hold a model actor, the time it is given on top of `activate.actor_wait_s`
# to start: a worker process, torch, the model's weights (a loaded node takes a while).
START_S = 300.0


class ModelActor:
    """Hosts the model: loads it once (`__init__`) and runs a stage's unit of work on it
    (`run`). The work itself is the algorithm layer's: activating videos
    (`pipeline.activations`), randomised-model gradients (`pipeline.scoring.randomisation`),
    deletion plans' outcomes (`pipeline.evaluation.outcomes`); each reads what it needs here:
    `model`, `device`, `spec`, `params`, `clip_spec`, `limits`, `class_index`, `cache`."""

    def __init__(self, model_cfg: dict[str, Any], clip_cfg: dict[str, Any], params: ActivateParams,
                 pad_short: bool, torch_threads: int, module: Any = None,
                 decode_cfg: Optional[dict[str, Any]] = None) -> None:
        import torch

        # Ray sets OMP_NUM_THREADS to the actor's CPUs; the stages run one after the other, so
        # a CPU actor may use the node's cores.
        torch.set_num_threads(torch_threads or len(os.sched_getaffinity(0)))
        self.device = pick_device(model_cfg.get("device", "auto"))
        self.model = prepare_model(load_model(model_cfg, module), self.device, channels_last=params.channels_last)
        self.clip_spec = ClipSpec(**clip_cfg)
        self.limits = DecodeLimits(**(decode_cfg or {}))
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
        self.cache: dict[Any, Any] = {}  # what the work keeps between units (randomised model copies)

    def class_index(self, row: dict[str, Any]) -> int:
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


def actor_shape(a: ActivateConfig, autoscaler_config: Optional[str]) -> tuple[dict[str, Any], int, str]:
    """(Ray options of one model actor, the most actors, what one asks for in words) from the
    `activate` section: GPU actors when `gpus_per_actor` asks for them (or, left null, where
    the cluster has a GPU now), else CPU actors."""
    gpus_now, gpus_max = cluster_gpus(autoscaler_config)
    per = gpus_per_actor(a)
    if per > 0:
        can = gpus_max if gpus_max is not None else gpus_now
        n = a.num_actors or max(1, int(can // per))
        return {"num_gpus": per, "num_cpus": 1}, n, f"{per:g} GPU"
    return {"num_cpus": a.cpus_per_actor}, a.num_actors or 1, f"{a.cpus_per_actor} CPU"


def check_actor_resources(cfg: Config) -> None:
    """Before any work: GPU actors asked for (`activate.gpus_per_actor` > 0) on a cluster that
    has no GPU now would wait in vain unless its autoscaler can launch one: the node types of
    `ray.autoscaler_config` say so."""
    per = cfg.activate.gpus_per_actor
    if not per or not {"activate", "concepts", "evaluate"} & set(cfg.run.stages):
        return
    now, can = cluster_gpus(cfg.ray.autoscaler_config)
    if now or can:
        return
    from pipeline.config import ConfigError

    why = ("no node type of its autoscaler has one" if can == 0 else
           "no autoscaler config was found to say it can launch one (ray.autoscaler_config)")
    raise ConfigError("activate.gpus_per_actor", f"asks for GPUs, but the cluster has none now and {why}; set "
                      "activate.gpus_per_actor=0 for CPU actors", per)


class ModelActors:
    """A stage's pool of model actors, from `activate.min_actors` to `activate.num_actors` of
    them (`actor_shape`; at most `work`, the units the stage has), killed when the `with`
    block ends.

    Entering waits until `min_actors` are ready (each loaded its model), saying what it waits
    for; the others join as nodes come (an autoscaler launches them for the actors' demand). An
    actor lost with its node is replaced; the calls it had in flight go back to the queue
    (`ActorQueue`). With no actor ready for `activate.actor_wait_s`, the stage stops with
    `ResourceWaitError`. `described` holds each ready actor's `describe()` (device, node, batch
    size, precision, classes, layers)."""

    def __init__(self, cfg: Config, params: ActivateParams, module: Any = None, stage: str = "activate",
                 work: Optional[int] = None) -> None:
        self.cfg, self.params, self.module, self.stage = cfg, params, module, stage
        a = cfg.activate
        self.options, self.size, self.asks = actor_shape(a, cfg.ray.autoscaler_config)
        if work is not None:  # no more actors (nodes) than the stage has units of work for
            self.size = max(1, min(self.size, work))
        self.min_ready = min(a.min_actors, self.size)
        self.wait_s = float(a.actor_wait_s)
        self.slots: dict[int, Any] = {}  # slot -> actor handle
        self.starting: dict[ray.ObjectRef, int] = {}  # describe() call -> slot, until the actor is ready
        self.ready: list[int] = []
        self.described: list[dict[str, Any]] = []
        self.replaced = 0
        self.waiting_since = time.monotonic()
        self._said = 0.0
        self._next = 0

    def _start(self) -> None:
        remote = ray.remote(max_restarts=0, max_task_retries=0)(ModelActor)
        cfg = self.cfg
        slot, self._next = self._next, self._next + 1
        actor = remote.options(**self.options).remote(
            dataclasses.asdict(cfg.model), dataclasses.asdict(cfg.clip), self.params,
            cfg.segment.short_supervoxels == "pad", cfg.activate.torch_threads, self.module,
            dataclasses.asdict(cfg.decode))
        self.slots[slot] = actor
        self.starting[actor.describe.remote()] = slot

    def __enter__(self) -> "ModelActors":
        try:
            for _ in range(self.size):
                self._start()
            while len(self.ready) < self.min_ready:
                self.poll([], timeout=5.0)
        except BaseException:
            self.__exit__()
            raise
        return self

    def poll(self, refs: list[ray.ObjectRef], timeout: float) -> list[ray.ObjectRef]:
        """Wait for the first of `refs` and the actors still starting; take in the actors that
        became ready; return the finished refs among `refs`. Raises ResourceWaitError once no
        actor has been ready for `actor_wait_s`."""
        starting = list(self.starting)
        done, _ = ray.wait([*refs, *starting], num_returns=1, timeout=timeout)
        for ref in done:
            if ref in self.starting:
                self._ready(ref)
        if not self.ready:
            self._check_wait()
        return [ref for ref in done if ref not in starting]

    def _ready(self, ref: ray.ObjectRef) -> None:
        slot = self.starting.pop(ref)
        try:
            described = ray.get(ref)
        except ray.exceptions.RayActorError as e:
            if getattr(e, "actor_init_failed", False):  # its own start failed (the model would not load)
                raise RuntimeError(f"{self.stage}: a model actor failed to start: {describe_failure(e, 'model actor')}"
                                   ) from None
            self.lost(slot)  # lost with its node while it loaded the model: replaced
            return
        self.ready.append(slot)
        self.described.append(described)
        if len(self.described) > self.min_ready or self.replaced:
            log.info("%s: model actor %d of %d ready (%s on node %s)", self.stage, len(self.ready), self.size,
                     described["device"], described["node_id"][:12])

    def _check_wait(self) -> None:
        """Stop after `actor_wait_s` without a node that can hold an actor; where one can, the
        actor is starting (or the node is busy with other work) and gets `START_S` more."""
        now = time.monotonic()
        waited = now - self.waiting_since
        gpus = int(ray.cluster_resources().get("GPU", 0))
        room = a_node_fits(self.options)
        if waited >= self.wait_s + (START_S if room else 0.0):
            why = (f"a node can hold one but none started within {START_S:g} s more" if room else
                   f"each asks for {self.asks} and the cluster has {gpus} GPU(s) now")
            raise ResourceWaitError(
                f"{self.stage}: no model actor could start within {self.wait_s:g} s (activate.actor_wait_s): {why}; "
                "the run folder keeps what was done, rerun to resume once the cluster has room (or set "
                "activate.gpus_per_actor=0 for CPU actors)")
        if now - self._said >= 30.0 or not self._said:
            self._said = now
            what = "a node can hold one, it is starting" if room else "no node can hold one yet"
            log.info("%s: waiting for a model actor (each asks for %s; the cluster has %d GPU(s) now; %s): %.0f s of "
                     "%g s (activate.actor_wait_s)", self.stage, self.asks, gpus, what, waited, self.wait_s)

    def lost(self, slot: int) -> None:
        """The actor of `slot` died (its node was lost, or its process): start a replacement."""
        actor = self.slots.pop(slot, None)
        if actor is None:
            return
        if slot in self.ready:
            self.ready.remove(slot)
        if not self.ready:
            self.waiting_since = time.monotonic()
        ray.kill(actor)
        self.replaced += 1
        log.warning("%s: a model actor was lost; starting another (%d replaced so far)", self.stage, self.replaced)
        self._start()

    def __exit__(self, *exc: object) -> None:
        for actor in self.slots.values():
            ray.kill(actor)
        self.slots, self.starting, self.ready = {}, {}, []

    def queue(self, per_actor: int = 2, split: Any = None) -> "ActorQueue":
        """A queue of `ModelActor.run` calls on this pool (see `ActorQueue`)."""
        return ActorQueue(self, per_actor, split=split)

    def map_units(self, fn: Any, items: Iterable[tuple[Any, tuple]], split: Any = None) -> Iterator[Outcome]:
        """`fn(actor, *args)` on the actors for each (key, args) item (`ModelActor.run`), two
        units in flight per actor; `items` is consumed only as units are submitted. A unit
        that fails as a whole is replaced by the items `split(key, args)` gives (see
        `map_tasks`)."""
        queue = self.queue(split=split)
        it = iter(items)

        def top_up() -> None:
            while queue.backlog < queue.per_actor * max(1, len(self.ready)):
                try:
                    key, args = next(it)
                except StopIteration:
                    return
                queue.put(key, (fn, *args))

        top_up()
        for out in queue:
            yield out
            top_up()

    @property
    def bf16(self) -> bool | str:
        """Whether the actors run bf16: True, False, or "mixed"."""
        kinds = {bool(d["bf16"]) for d in self.described}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    @property
    def devices(self) -> list[str]:
        return sorted({d["device"] for d in self.described})

    @property
    def nodes(self) -> list[str]:
        """The nodes the model actors ran on (replacements included)."""
        return list(dict.fromkeys(d["node_id"] for d in self.described))


class ActorQueue:
    """`ModelActor.run` calls on a pool's ready actors, submitted while the caller reads
    results: `put(key, args)` queues a call (the driver keeps the queue; at most `per_actor`
    calls in flight on each actor, the least loaded first), iterating yields Outcomes as calls
    finish, and the caller may `put` more while it iterates.

    A call whose actor died (its node was lost) goes back to the front of the queue, at most
    `retries` times (a unit that kills its actor each time then fails with the reason), while
    the pool replaces the actor; an Outcome's `attempts` counts its tries. A call that failed
    as a whole is replaced by what `split(key, args)` gives, when that is more than one call."""

    def __init__(self, pool: ModelActors, per_actor: int = 2, retries: int = 2, split: Any = None) -> None:
        self.pool, self.per_actor, self.retries, self.split = pool, per_actor, retries, split
        self.queued: deque[tuple[Any, tuple, int]] = deque()
        self.pending: dict[ray.ObjectRef, tuple[Any, tuple, int, int]] = {}  # ref -> key, args, attempt, slot
        self.load: dict[int, int] = {}

    def put(self, key: Any, args: tuple, first: bool = False, attempt: int = 1) -> None:
        (self.queued.appendleft if first else self.queued.append)((key, args, attempt))

    @property
    def backlog(self) -> int:
        """Calls queued or in flight."""
        return len(self.queued) + len(self.pending)

    def _submit(self) -> None:
        ready = [s for s in self.pool.ready if s in self.pool.slots]
        while self.queued and ready and len(self.pending) < self.per_actor * len(ready):
            key, args, attempt = self.queued.popleft()
            slot = min(ready, key=lambda s: self.load.get(s, 0))
            self.load[slot] = self.load.get(slot, 0) + 1
            self.pending[self.pool.slots[slot].run.remote(*args)] = (key, args, attempt, slot)

    def __iter__(self) -> Iterator[Outcome]:
        while True:
            self._submit()
            if not self.pending and not self.queued:
                return
            done = self.pool.poll(list(self.pending), timeout=5.0)
            if not done:
                continue
            key, args, attempt, slot = self.pending.pop(done[0])
            self.load[slot] -= 1
            try:
                out = Outcome(key, value=ray.get(done[0]), attempts=attempt)
            except ray.exceptions.RayActorError as e:  # the actor died (with its node): replaced
                self.pool.lost(slot)
                if attempt <= self.retries:
                    self.put(key, args, first=True, attempt=attempt + 1)
                    continue
                out = Outcome(key, error=f"{describe_failure(e, 'model actor')} ({attempt} times on this unit)",
                              attempts=attempt)
            except ray.exceptions.RayError as e:  # the unit raised (or its result was lost)
                out = Outcome(key, error=describe_failure(e, "model actor"), attempts=attempt)
            parts = self.split(key, args[1:]) if self.split and not out.ok else []
            if len(parts) > 1:  # failed as a whole: its videos one by one
                for k, a in reversed(parts):
                    self.put(k, (args[0], *a), first=True)
                continue
            yield out
