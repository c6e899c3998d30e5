"""Loading ahead of compute: while a model actor works on one video, a thread decodes the next
(PyAV and the Parquet reader release the GIL), so the device does not wait on decoding."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, TypeVar, Union

T = TypeVar("T")


def prefetched(items: Iterable[T], load: Callable[[T], Any],
               depth: int = 2) -> Iterator[tuple[T, Union[Any, Exception]]]:
    """(item, load(item)) in order, with up to `depth` items loading ahead in a thread; a load
    that raises yields its exception (the caller decides what a failed item means)."""
    it = iter(items)
    queue: list[tuple[T, Future]] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
        def fill() -> None:
            while len(queue) < depth:
                try:
                    item = next(it)
                except StopIteration:
                    return
                queue.append((item, pool.submit(load, item)))

        fill()
        while queue:
            item, future = queue.pop(0)
            fill()
            try:
                yield item, future.result()
            except Exception as e:  # noqa: BLE001 - handed to the caller
                yield item, e
