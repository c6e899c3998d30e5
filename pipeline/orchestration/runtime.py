"""Ray plumbing shared by the stages: starting or joining a cluster, fanning a pure
function out over tasks with bounded memory, and progress the user can follow."""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import ray

log = logging.getLogger("pipeline")


def init_ray(ray_cfg: dict[str, Any]) -> None:
    """Join the cluster `ray.address` (or RAY_ADDRESS, set by `ray job submit`), or start an
    embedded one. Safe to call when Ray is already up (tests share one instance)."""
    if ray.is_initialized():
        return
    address = ray_cfg.get("address") or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"log_to_driver": True, "configure_logging": False}
    if address:
        ray.init(address=address, **kwargs)
        return
    ray.init(
        num_cpus=ray_cfg.get("num_cpus"),
        object_store_memory=ray_cfg.get("object_store_memory"),
        include_dashboard=bool(ray_cfg.get("include_dashboard")),
        **kwargs,
    )


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
    raise ConfigError(f"config key 'ray.cpu_label_selector' = {wanted}: no node of the cluster has these labels "
                      "(label the CPU nodes, as cluster.yaml does, or set ray.cpu_label_selector=[])")


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


def _on_node(fn: Callable[..., Any]) -> Callable[..., tuple[str, Any]]:
    """`fn` run in a task, its result returned with the id of the node that ran it."""
    def run(*args: Any) -> tuple[str, Any]:
        return ray.get_runtime_context().get_node_id(), fn(*args)

    run.__name__ = run.__qualname__ = fn.__name__  # the task's name in Ray's tools
    return run


def map_tasks(fn: Callable[..., Any], items: Iterable[Any], *args: Any, stage: str, num_cpus: float = 1,
              max_in_flight: Optional[int] = None, progress: Optional[Progress] = None,
              nodes: Optional[dict[str, int]] = None, label_selector: Optional[dict[str, str]] = None) -> Iterator[Any]:
    """Run `fn(item, *args)` as one Ray task per item; yield results as they finish.

    At most `max_in_flight` tasks are queued at once (default: twice the cluster's CPUs),
    so memory stays bounded however long the list is; `items` may be a generator (then give
    `progress`), consumed only as tasks are queued. `args` are put in the object store
    once and shared by every task. A task that dies with its worker is retried (twice).
    `nodes`, if given, counts the tasks per node id that ran them; `label_selector` restricts
    them to nodes with those Ray labels.
    """
    remote = ray.remote(num_cpus=num_cpus, max_retries=2)(_on_node(fn))
    if label_selector:
        remote = remote.options(label_selector=dict(label_selector))
    shared = [ray.put(a) for a in args]
    if max_in_flight is None:
        max_in_flight = max(2, 2 * int(ray.cluster_resources().get("CPU", 2)))
    progress = progress or Progress(stage, len(items))  # type: ignore[arg-type]  # a sized iterable
    pending: list[ray.ObjectRef] = []
    it: Iterable[Any] = iter(items)
    exhausted = False
    while True:
        while not exhausted and len(pending) < max_in_flight:
            try:
                pending.append(remote.remote(next(it), *shared))  # type: ignore[call-overload]
            except StopIteration:
                exhausted = True
        if not pending:
            return
        ready, pending = ray.wait(pending, num_returns=1)
        for ref in ready:
            node, result = ray.get(ref)
            if nodes is not None:
                nodes[node] = nodes.get(node, 0) + 1
            progress.update()
            yield result
