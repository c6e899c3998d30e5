"""The job's stages, one module each, in the method's order; each module's `run(job)` is its
step (`pipeline.stages.base.Job` is what a stage gets)."""

from __future__ import annotations

import importlib
from typing import Callable

from pipeline.config import STAGES


def stage(name: str) -> Callable[..., None]:
    """The `run(job)` of a stage, by its name in `run.stages`."""
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages: {list(STAGES)}")
    return importlib.import_module(f"pipeline.stages.{name}").run
