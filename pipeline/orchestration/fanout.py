"""Every fan-out of the job: pure functions over Ray tasks, and calls on model actors, each with
a bounded number in flight, results as they finish, in one shape (`Outcome`).

Workers and actor methods simply raise when a unit of work fails. The driver gets an
`Outcome` per unit either way: its value, or `error` saying why (`ValueError: ...` for what the
work raised, `the worker died: ...` when the process running it was lost), so a stage decides
in one place what a failed unit means (a failed row, or a stop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional

import ray

from pipeline.orchestration.runtime import Progress



@dataclass
class Outcome:
    """One unit of work as it came back: `value`, or `error` (why it failed)."""

    key: Any
    value: Any = None
    error: Optional[str] = None
    node: Optional[str] = None  # the Ray node that ran it

    @property
    def ok(self) -> bool:
        return self.error is None


def describe_failure(e: Exception, what: str = "worker") -> str:
    """The reason a Ray call failed, as a stage records it."""
    if isinstance(e, ray.exceptions.RayTaskError) and getattr(e, "cause", None) is not None:
        return f"{type(e.cause).__name__}: {e.cause}"
    return f"the {what} died: {type(e).__name__}"


def _on_node(fn: Callable[..., Any]) -> Callable[..., tuple[str, Any]]:
    """`fn` run in a task, its result returned with the id of the node that ran it."""
    def run(*args: Any) -> tuple[str, Any]:
        return ray.get_runtime_context().get_node_id(), fn(*args)

    run.__name__ = run.__qualname__ = fn.__name__  # the task's name in Ray's tools
    return run


def _bounded(submit: Callable[[Any, tuple], ray.ObjectRef], items: Iterable[tuple[Any, tuple]],
             max_in_flight: int) -> Iterator[tuple[Any, ray.ObjectRef]]:
    """Submit (key, args) items while fewer than `max_in_flight` are pending; yield (key,
    finished ref) as they finish. `items` is consumed only as calls are submitted."""
    pending: dict[ray.ObjectRef, Any] = {}
    it = iter(items)
    exhausted = False
    while True:
        while not exhausted and len(pending) < max_in_flight:
            try:
                key, args = next(it)
            except StopIteration:
                exhausted = True
                break
            pending[submit(key, args)] = key
        if not pending:
            return
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            yield pending.pop(ref), ref


def map_tasks(fn: Callable[..., Any], items: Iterable[tuple[Any, tuple]], *shared: Any, progress: Progress,
              num_cpus: float = 1, max_in_flight: Optional[int] = None,
              label_selector: Optional[dict[str, str]] = None) -> Iterator[Outcome]:
    """Run `fn(*args, *shared)` as one Ray task per (key, args) item; yield Outcomes as they finish.

    At most `max_in_flight` tasks are queued at once (default: twice the cluster's CPUs), so
    memory stays bounded however many items there are; `items` may be a generator, consumed
    only as tasks are queued. `shared` values go into the object store once, for every task. A
    task whose worker dies is retried (twice) before its Outcome says so; `label_selector`
    restricts the tasks to nodes with those Ray labels.
    """
    remote = ray.remote(num_cpus=num_cpus, max_retries=2)(_on_node(fn))
    if label_selector:
        remote = remote.options(label_selector=dict(label_selector))
    refs = [ray.put(a) for a in shared]
    if max_in_flight is None:
        max_in_flight = max(2, 2 * int(ray.cluster_resources().get("CPU", 2)))
    for key, ref in _bounded(lambda _key, args: remote.remote(*args, *refs), items, max_in_flight):
        try:
            node, value = ray.get(ref)
            out = Outcome(key, value=value, node=node)
        except ray.exceptions.RayError as e:
            out = Outcome(key, error=describe_failure(e))
        progress.update()
        yield out


def call_actors(actors: list[Any], method: str, items: Iterable[tuple[Any, tuple]],
                per_actor: int = 2) -> Iterator[Outcome]:
    """Call `actor.<method>(*args)` for each (key, args) item, at most `per_actor` calls in
    flight on each actor (so the next item is already queued while one runs), the least loaded
    actor first; yield Outcomes as they finish."""
    load = {i: 0 for i in range(len(actors))}
    where: dict[Any, int] = {}

    def submit(key: Any, args: tuple) -> ray.ObjectRef:
        i = min(load, key=load.get)  # type: ignore[arg-type]
        load[i] += 1
        where[key] = i
        return getattr(actors[i], method).remote(*args)

    for key, ref in _bounded(submit, items, per_actor * len(actors)):
        load[where.pop(key)] -= 1
        try:
            yield Outcome(key, value=ray.get(ref))
        except ray.exceptions.RayError as e:
            yield Outcome(key, error=describe_failure(e, "model actor"))
