"""Ray plumbing shared by the stages: starting or joining a cluster, node labels, and progress
the user can follow (the fan-outs are in `pipeline.orchestration.fanout`)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

import ray

if TYPE_CHECKING:
    from pipeline.config import ActivateConfig, Config

log = logging.getLogger("pipeline")


def init_ray(ray_cfg: dict[str, Any]) -> None:
    """Join the cluster `ray.address` (or RAY_ADDRESS, set by `ray job submit`), or start an
    embedded one. Safe to call when Ray is already up (tests share one instance).

    The embedded cluster is asked for by name (`address="local"`): left to `ray.init()` alone,
    a driver on a machine where `ray start` (or Ray's simulated cluster) runs would join that
    cluster instead, and fail there because it sets `num_cpus`."""
    if ray.is_initialized():
        return
    address = ray_cfg.get("address") or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"log_to_driver": True, "configure_logging": False}
    if address and address != "local":
        ray.init(address=address, **kwargs)
        return
    ray.init(
        address="local",
        num_cpus=ray_cfg.get("num_cpus"),
        object_store_memory=ray_cfg.get("object_store_memory"),
        include_dashboard=bool(ray_cfg.get("include_dashboard")),
        **kwargs,
    )


def cluster_cpus() -> int:
    """The CPUs of the Ray cluster (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def label_selector(items: Sequence[str]) -> dict[str, str]:
    """`ray.cpu_label_selector`'s `key:value` strings as Ray's label selector."""
    return dict(item.split(":", 1) for item in items)


BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` writes the autoscaler's config on the head


@dataclass(frozen=True)
class NodeType:
    """A node type an autoscaler may launch: its resources, Ray labels and most nodes."""

    name: str
    resources: dict[str, float]
    labels: dict[str, str]
    max_workers: int


def node_types(path: Optional[str]) -> Optional[list[NodeType]]:
    """The worker node types of the autoscaler config at `path` (None: `ray up`'s copy on the
    head node, if there is one); None when there is no such file (a fixed cluster, or one
    whose autoscaler this driver cannot see)."""
    import yaml

    path = os.path.expanduser(path or BOOTSTRAP_CONFIG)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        config = yaml.safe_load(f) or {}
    head = config.get("head_node_type")
    out = []
    for name, t in (config.get("available_node_types") or {}).items():
        if name == head:
            continue
        out.append(NodeType(name, {k: float(v) for k, v in (t.get("resources") or {}).items()},
                            {str(k): str(v) for k, v in (t.get("labels") or {}).items()},
                            int(t.get("max_workers", config.get("max_workers", 0)) or 0)))
    return out


def _matches(labels: dict[str, str], selector: dict[str, str]) -> bool:
    """Equality selectors only (`!value` and `in(...)` are left to Ray)."""
    return all(labels.get(k) == v for k, v in selector.items() if not v.startswith("!") and not v.startswith("in("))


def check_label_selector(selector: dict[str, str], autoscaler_config: Optional[str] = None) -> None:
    """Fail fast, naming the config key, when neither an alive node nor a node type the
    autoscaler can launch (`ray.autoscaler_config`) carries the labels `ray.cpu_label_selector`
    asks for. On an autoscaling cluster no worker is up when the job is submitted."""
    if not selector:
        return
    if any(node.get("Alive") and _matches(node.get("Labels") or {}, selector) for node in ray.nodes()):
        return
    types = node_types(autoscaler_config)
    if types and any(t.max_workers > 0 and _matches(t.labels, selector) for t in types):
        return
    from pipeline.config import ConfigError

    where = (f"no node of the cluster and no node type of its autoscaler "
             f"({', '.join(t.name for t in types)}) has these labels" if types else
             "no node of the cluster has these labels, and no autoscaler config was found "
             f"(ray.autoscaler_config, default {BOOTSTRAP_CONFIG})")
    raise ConfigError("ray.cpu_label_selector", f"{where} (label the CPU nodes, as cluster.yaml does, or set "
                      "ray.cpu_label_selector=[])", [f"{k}:{v}" for k, v in selector.items()])


def cluster_gpus(autoscaler_config: Optional[str] = None) -> tuple[int, Optional[int]]:
    """(GPUs alive now, GPUs the cluster can have: alive plus what its autoscaler's node types
    can launch, None where no autoscaler config is found)."""
    now = int(ray.cluster_resources().get("GPU", 0))
    types = node_types(autoscaler_config)
    if types is None:
        return now, None
    return now, max(now, int(sum(t.resources.get("GPU", 0) * t.max_workers for t in types)))


def cluster_nodes() -> dict[str, dict[str, Any]]:
    """The cluster's nodes as run.json records them (the stages name nodes by id): each one's
    Ray labels, resources and whether it is alive, those lost or scaled away included."""
    return {n["NodeID"]: {"alive": bool(n.get("Alive")), "labels": dict(n.get("Labels") or {}),
                          "resources": {k: v for k, v in (n.get("Resources") or {}).items()
                                        if k in ("CPU", "GPU", "memory")}}
            for n in ray.nodes()}


def a_node_fits(options: dict[str, Any]) -> bool:
    """Whether an alive node has, in all, the CPUs and GPUs of a task or actor with these Ray
    `options` (what it holds now aside): whether waiting for it is waiting for it to start
    rather than for a node."""
    ask = {"CPU": float(options.get("num_cpus") or 0), "GPU": float(options.get("num_gpus") or 0)}
    return any(node.get("Alive") and all((node.get("Resources") or {}).get(k, 0.0) >= v for k, v in ask.items())
               for node in ray.nodes())


class ResourceWaitError(RuntimeError):
    """What a stage asked the cluster for (a GPU, a model actor) did not come within its wait."""


def gpus_per_actor(a: ActivateConfig) -> float:
    """`activate.gpus_per_actor` resolved: as set, or, left null, 1 where the cluster has a GPU
    now and 0 (CPU actors) where it has none."""
    per = a.gpus_per_actor
    return float(per) if per is not None else (1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0)


def gpus_wanted(cfg: Config) -> bool:
    """Whether the job is meant for GPUs (its model actors ask for them)."""
    return gpus_per_actor(cfg.activate) > 0


def wait_for_gpu(stage: str, wait_s: float) -> str:
    """Until a task asking for one GPU runs (on an autoscaling cluster, a GPU node is launched
    for it), saying what the stage waits for; the id of the node it ran on. Raises
    ResourceWaitError after `wait_s` seconds (`activate.actor_wait_s`)."""
    probe = ray.remote(num_gpus=1, num_cpus=0, max_retries=0)(_node_id).remote()
    start = said = time.monotonic()
    while True:
        done, _ = ray.wait([probe], timeout=5.0)
        if done:
            return ray.get(probe)
        now = time.monotonic()
        if now - start >= wait_s:
            ray.cancel(probe, force=True)
            raise ResourceWaitError(f"{stage}: no GPU came within {wait_s:g} s (activate.actor_wait_s); the run "
                                    "folder keeps what was done, rerun to resume once the cluster has a GPU node")
        if now - said >= 30.0:
            said = now
            log.info("%s: waiting for a GPU node: %.0f s of %g s (activate.actor_wait_s)", stage, now - start, wait_s)


def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()


def share(obj: Any) -> Any:
    """`obj` in Ray's object store, once for every task and actor that takes it (an nn.Module
    handed to the Python API goes to every model actor this way)."""
    return ray.put(obj)


class Progress:
    """Logs `stage: done/total units, rate, eta` at most every `every` seconds and at the end."""

    def __init__(self, stage: str, total: int, unit: str = "videos", every: float = 5.0) -> None:
        self.stage, self.total, self.unit, self.every = stage, total, unit, every
        self.done = 0
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every or self.done == self.total:
            self.last = now
            self.report()

    def report(self) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        log.info("%s: %d/%d %s (%.1f %s/s, %.0f s elapsed, eta %.0f s)", self.stage, self.done, self.total,
                 self.unit, rate, self.unit, elapsed, eta)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start


def pickled_digest(obj: object) -> str:
    """What an object handed to the tasks is, for a fingerprint: a digest of it as Ray pickles
    it (by value where cloudpickle does so: a class of a notebook with its code)."""
    import hashlib

    from ray import cloudpickle

    return hashlib.sha256(cloudpickle.dumps(obj)).hexdigest()[:12]
