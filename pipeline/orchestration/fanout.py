"""Every fan-out of the job: pure functions over Ray tasks, and calls on model actors, each with
a bounded number in flight, results as they finish, in one shape (`Outcome`).

Workers and actor methods simply raise when a unit of work fails. The driver gets an
`Outcome` per unit either way: its value, or `error` saying why (`ValueError: ...` for what the
work raised, `the worker died: ...` when the process running it was lost), so a stage decides
in one place what a failed unit means (a failed row, or a stop).
"""

from __future__ import annotations

from collections import deque
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


def map_tasks(fn: Callable[..., Any], items: Iterable[tuple[Any, tuple]], *shared: Any, progress: Optional[Progress],
              num_cpus: float = 1, max_in_flight: Optional[int] = None,
              label_selector: Optional[dict[str, str]] = None) -> Iterator[Outcome]:
    """Run `fn(*args, *shared)` as one Ray task per (key, args) item; yield Outcomes as they finish.

    At most `max_in_flight` tasks are queued at once (default: twice the cluster's CPUs), so
    memory stays bounded however many items there are; `items` may be a generator, consumed
    only as tasks are queued. `shared` values go into the object store once, for every task. A
    task whose worker dies is retried (twice) before its Outcome says so; `label_selector`
    restricts the tasks to nodes with those Ray labels. `progress` counts one per item (None: the
    caller counts).
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
        if progress is not None:
            progress.update()
        yield out


class ActorQueue:
    """Calls on a fixed set of actors, submitted while the caller reads results: `put(key,
    args)` queues `actor.<method>(*args)` (the driver keeps the queue; at most `per_actor` calls
    are in flight on each actor, the least loaded first), iterating yields Outcomes as calls
    finish, and the caller may `put` more while it iterates (a pass that depends on the one
    before, a class opened when the queue runs low)."""

    def __init__(self, actors: list[Any], method: str, per_actor: int = 2) -> None:
        self.actors, self.method, self.per_actor = actors, method, per_actor
        self.queued: deque[tuple[Any, tuple]] = deque()
        self.pending: dict[ray.ObjectRef, tuple[Any, int]] = {}
        self.load = {i: 0 for i in range(len(actors))}

    def put(self, key: Any, args: tuple, first: bool = False) -> None:
        (self.queued.appendleft if first else self.queued.append)((key, args))

    @property
    def backlog(self) -> int:
        """Calls queued or in flight."""
        return len(self.queued) + len(self.pending)

    def _submit(self) -> None:
        while self.queued and len(self.pending) < self.per_actor * len(self.actors):
            key, args = self.queued.popleft()
            i = min(self.load, key=self.load.get)  # type: ignore[arg-type]
            self.load[i] += 1
            self.pending[getattr(self.actors[i], self.method).remote(*args)] = (key, i)

    def __iter__(self) -> Iterator[Outcome]:
        while True:
            self._submit()
            if not self.pending:
                return
            done, _ = ray.wait(list(self.pending), num_returns=1)
            key, i = self.pending.pop(done[0])
            self.load[i] -= 1
            try:
                out = Outcome(key, value=ray.get(done[0]))
            except ray.exceptions.RayError as e:
                out = Outcome(key, error=describe_failure(e, "model actor"))
            yield out


def call_actors(actors: list[Any], method: str, items: Iterable[tuple[Any, tuple]],
                per_actor: int = 2) -> Iterator[Outcome]:
    """Call `actor.<method>(*args)` for each (key, args) item, at most `per_actor` calls in
    flight on each actor (so the next item is already queued while one runs), the least loaded
    actor first; yield Outcomes as they finish. `items` is consumed only as calls are submitted."""
    queue = ActorQueue(actors, method, per_actor)
    it = iter(items)

    def top_up() -> None:
        while len(queue.queued) + len(queue.pending) < per_actor * len(actors):
            try:
                queue.put(*next(it))
            except StopIteration:
                return

    top_up()
    for out in queue:
        yield out
        top_up()
