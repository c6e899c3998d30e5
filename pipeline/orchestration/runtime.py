"""Ray plumbing shared by the stages: starting or joining a cluster, node labels, and progress
the user can follow (the fan-outs are in `pipeline.orchestration.fanout`)."""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Sequence

import ray

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


def check_label_selector(selector: dict[str, str]) -> None:
    """Fail fast, naming the config key, when no alive node carries the labels that
    `ray.cpu_label_selector` asks for (equality selectors; others are left to Ray)."""
    if not selector:
        return
    plain = {k: v for k, v in selector.items() if not v.startswith("!") and not v.startswith("in(")}
    for node in ray.nodes():
        labels = node.get("Labels") or {}
        if node.get("Alive") and all(labels.get(k) == v for k, v in plain.items()):
            return
    from pipeline.config import ConfigError

    wanted = [f"{k}:{v}" for k, v in selector.items()]
    raise ConfigError("ray.cpu_label_selector", "no node of the cluster has these labels (label the CPU nodes, as "
                      "cluster.yaml does, or set ray.cpu_label_selector=[])", wanted)


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
