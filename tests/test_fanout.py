"""The fan-out's promise to the stages, on the shared local Ray: a unit of work that fails as
a whole (it raises, or kills its worker every time it runs) is split into one unit per item,
so only the bad item fails and its unit-mates finish (what a stage's `one_at_a_time` does with
a unit of videos)."""

from __future__ import annotations

import os
import sys

import pytest

from pipeline.orchestration.fanout import map_tasks

pytestmark = pytest.mark.ray


def _work(unit: str, rows: list[str], how: str) -> int:
    if "bad" in rows:
        if how == "exit":
            os._exit(1)  # the worker process dies, as an out-of-memory kill takes it
        raise ValueError("a bad row")
    return len(rows)


@pytest.mark.parametrize("how", ["raise", "exit"])
def test_a_unit_that_fails_as_a_whole_is_split_and_only_its_bad_item_fails(local_ray, how):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import a test module
    units = {"u0": ["a", "b", "bad", "c"], "u1": ["d", "e"]}

    def split(key: str, args: tuple) -> list[tuple[str, tuple]]:
        rows = args[1]
        if len(rows) < 2:
            return []
        for i, row in enumerate(rows):
            units[f"{key}-{i}"] = [row]
        return [(f"{key}-{i}", (f"{key}-{i}", [row])) for i, row in enumerate(rows)]

    outs = list(map_tasks(_work, [(k, (k, v)) for k, v in list(units.items())], how, progress=None, split=split))
    failed = [o for o in outs if not o.ok]
    assert [units[o.key] for o in failed] == [["bad"]], [o.error for o in failed]
    assert sorted(r for o in outs if o.ok for r in units[o.key]) == ["a", "b", "c", "d", "e"]
    if how == "raise":
        assert failed[0].error == "ValueError: a bad row"
    else:  # its worker lost each time: tried three times alone, after three tries of its unit
        assert "died" in failed[0].error and failed[0].attempts == 3
