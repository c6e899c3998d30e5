"""The job's stages, one module each, in the method's order; each module's `run(job)` is its
step (`pipeline.stages.base.Job` is what a stage gets)."""

from __future__ import annotations

import importlib
from typing import Callable, Sequence

from pipeline.config import STAGES
from pipeline.run_folder import (ACTIVATIONS, CONCEPTS, PREDICTIONS, SUPERVOXELS, VIDEOS, VOXEL_IMPORTANCE,
                                 RunFolder)

# What a stage reads that another stage writes: (dataset, the stage that writes it).
INPUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "segment": ((VIDEOS, "ingest"),),
    "activate": ((VIDEOS, "ingest"), (SUPERVOXELS, "segment")),
    "concepts": ((PREDICTIONS, "activate"),),
    "atlas": ((ACTIVATIONS, "activate"),),
    "evaluate": ((CONCEPTS, "concepts"), (VOXEL_IMPORTANCE, "concepts")),
    "report": ((CONCEPTS, "concepts"),),
}


def stage(name: str) -> Callable[..., None]:
    """The `run(job)` of a stage, by its name in `run.stages`."""
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages: {list(STAGES)}")
    return importlib.import_module(f"pipeline.stages.{name}").run


def check_inputs(folder: RunFolder, stages: Sequence[str]) -> None:
    """Before any work (Ray not started yet): each stage's inputs are in the folder or made by
    a stage of this run; RunFolderError names the first missing one and the stage to run."""
    for name in stages:
        for dataset, producer in INPUTS.get(name, ()):
            if producer not in stages:
                folder.require(dataset, name, producer)
