"""Every fan-out of the job over Ray tasks (the model actors' queue is in
`pipeline.orchestration.actors`), each with a bounded number in flight, results as they finish,
in one shape (`Outcome`).

Workers and actor methods simply raise when a unit of work fails. The driver gets an
`Outcome` per unit either way: its value, or `error` saying why (`ValueError: ...` for what the
work raised, `the worker died: ...` when the process running it was lost), so a stage decides
in one place what a failed unit means (a failed row, or a stop).
"""

from __future__ import annotations

import time
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
    attempts: int = 1  # more than 1: retried after its worker or actor was lost

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


def map_tasks(fn: Callable[..., Any], items: Iterable[tuple[Any, tuple]], *shared: Any, progress: Optional[Progress],
              num_cpus: float = 1, max_in_flight: Optional[int] = None,
              label_selector: Optional[dict[str, str]] = None, retries: int = 2, timeout_s: float = 0,
              split: Optional[Callable[[Any, tuple], list[tuple[Any, tuple]]]] = None,
              on_error: Optional[str] = None) -> Iterator[Outcome]:
    """Run `fn(*args, *shared)` as one Ray task per (key, args) item; yield Outcomes as they finish.

    At most `max_in_flight` tasks are queued at once (default: twice the cluster's CPUs, looked
    at again every few seconds: on an autoscaling cluster the tasks waiting for a CPU are the
    demand that brings more nodes, and the bound grows as they come), so memory stays bounded
    however many items there are; `items` may be a generator, consumed
    only as tasks are queued. `shared` values go into the object store once, for every task. A
    task whose worker or node was lost is submitted again (at most `retries` times, before the
    items not yet started) and its Outcome's `attempts` counts the tries; one whose function
    raised is not. `label_selector` restricts the tasks to nodes with those Ray labels.
    `progress` counts one per item (None: the caller counts).

    `timeout_s` (0: none): a task not finished that long after it was queued is stopped
    (its worker killed: a read stuck in C code cannot be interrupted otherwise). A task stopped
    so, or failed as a whole (it raised, or its worker was lost more often than retried), is
    replaced by the items `split(key, args)` gives (one per video, say); an item that `split`
    leaves whole, or any item when there is no `split`, ends with a failed Outcome.

    `on_error` (a reduction's units, which cannot fail alone): a failed item raises
    RuntimeError("<on_error> <its key>: <why>") instead of yielding its Outcome.
    """
    remote = ray.remote(num_cpus=num_cpus, max_retries=0)(_on_node(fn))
    if label_selector:
        remote = remote.options(label_selector=dict(label_selector))
    refs = [ray.put(a) for a in shared]
    bound, looked = max_in_flight, 0.0
    pending: dict[ray.ObjectRef, tuple[Any, tuple, int, float]] = {}
    again: deque[tuple[Any, tuple, int]] = deque()
    it = iter(items)
    while True:
        if max_in_flight is None and time.monotonic() - looked > 5.0:
            bound, looked = max(2, 2 * int(ray.cluster_resources().get("CPU", 0))), time.monotonic()
        while len(pending) < bound:
            if again:
                key, args, attempt = again.popleft()
            else:
                try:
                    key, args = next(it)
                except StopIteration:
                    break
                attempt = 1
            pending[remote.remote(*args, *refs)] = (key, args, attempt, time.monotonic())
        if not pending:
            return
        done, _ = ray.wait(list(pending), num_returns=1, timeout=min(timeout_s, 5.0) if timeout_s else 5.0)
        finished = _stop_late(pending, timeout_s) if not done and timeout_s else []
        if done:
            key, args, attempt, _ = pending.pop(done[0])
            try:
                node, value = ray.get(done[0])
                finished.append((args, Outcome(key, value=value, node=node, attempts=attempt)))
            except ray.exceptions.RayTaskError as e:  # the function raised: no retry
                finished.append((args, Outcome(key, error=describe_failure(e), attempts=attempt)))
            except ray.exceptions.RayError as e:  # its worker or node was lost
                if attempt <= retries:
                    again.append((key, args, attempt + 1))
                else:
                    finished.append((args, Outcome(key, error=f"{describe_failure(e)} ({attempt} times)",
                                                   attempts=attempt)))
        for args, out in finished:
            parts = split(out.key, args) if split and not out.ok else []
            if len(parts) > 1:  # failed as a whole: its videos one by one
                again.extend((k, a, 1) for k, a in parts)
                continue
            if progress is not None:
                progress.update()
            if on_error is not None and not out.ok:
                raise RuntimeError(f"{on_error} {_named(out.key)}: {out.error}")
            yield out


def _named(key: Any) -> str:
    """A unit's key as an error names it: a (class, layer) pair as `class/layer`, quoted."""
    return "/".join(repr(k) if isinstance(k, str) else str(k) for k in key) if isinstance(key, tuple) else repr(key)


def _stop_late(pending: dict[ray.ObjectRef, tuple[Any, tuple, int, float]],
               timeout_s: float) -> list[tuple[tuple, Outcome]]:
    """Cancel the tasks queued more than `timeout_s` ago: their (args, timed-out Outcome)."""
    now = time.monotonic()
    out = []
    for ref in [r for r, (*_, since) in pending.items() if now - since > timeout_s]:
        key, args, attempt, _ = pending.pop(ref)
        ray.cancel(ref, force=True)
        out.append((args, Outcome(key, error=f"timed out: not done {timeout_s:g} s after it was queued",
                                  attempts=attempt)))
    return out
