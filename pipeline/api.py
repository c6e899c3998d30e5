"""The Python API: explain a video model from a notebook, and read a finished run.

    from pipeline import explain, open_run
    run = explain(videos="/data/ucf101", model="demo", output_dir="/tmp/ucf")  # or a torch.nn.Module
    run.concepts.sort_values(["target_class", "layer", "rank"])
    heat = run.voxel_importance("walk/v0001")                                 # float32 [T, H, W]
    run = open_run("s3://bucket/runs/k400")                                   # a finished run, anywhere

`explain` is the job `python -m pipeline` with the same defaults (conf/) and checks; its
errors name the argument that holds the bad value.
"""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any, Optional, Sequence, Union

import numpy as np

from pipeline import io, schemas
from pipeline.console import show_progress
from pipeline.api_config import (Videos, argument_for, compose_config, named_keys, shown,
                                 with_group_key)
from pipeline.concepts.user import table_file
from pipeline.config import GROUPS, MODULE, ConfigError
from pipeline.run_folder import (ACTIVATIONS, ATLAS_ASSIGNMENTS, ATLAS_CLASS_CONCEPTS,
                                 ATLAS_CONCEPTS, ATLAS_LINKS, CLIP_ACTIVATIONS, CONCEPT_IMPORTANCE,
                                 CONCEPT_MEMBERS, CONCEPT_PRESENCE, CONCEPT_SENSITIVITY, CONCEPTS,
                                 EVALUATION, PREDICTIONS, REPORT_INDEX, RUN_JSON, SUPERVOXELS, TCAV,
                                 VIDEOS, VOXEL_IMPORTANCE, RunFolder, partition)


def explain(videos: Videos = None, model: Any = "demo", output_dir: Optional[str] = None, *,
            layers: Optional[Sequence[str]] = None, stages: Optional[Sequence[str]] = None,
            model_options: Optional[dict[str, Any]] = None, cav_trainer: Any = None,
            user_concepts: Any = None, **overrides: Any) -> "Run":
    """Run 3D ACE on `videos` with `model`; returns the finished `Run`.

    videos: None (the embedded synthetic corpus), a folder of class folders
        (`<folder>/<class>/<video>.mp4`), a Kinetics-style CSV file (its videos under its own
        folder unless `dataset={"root": ...}`), or a list of video files (each labelled by the
        name of its folder).
    model: a registry name (`"demo"`, `"x3d_m"`, `"r3d_18"`, ...; see conf/model/) or a
        `torch.nn.Module` taking `B x 3 x T x H x W` (give `layers`; its input geometry and
        normalisation default to 16 x 112 x 112 and Kinetics' mean/std, see `model_options`).
    output_dir: the run folder, a path or a filesystem URI (default: the CLI's,
        `outputs/<dataset>-<model>`). A rerun with the same settings resumes it.
    layers: the layers to explain (module names; default: the registry's recommended ones).
    stages: the stages to run (default: all).
    model_options: the model's other settings (`{"class_names": [...], "window": 8,
        "pretrained": False, "device": "cpu"}`: the keys of `pipeline.config.ModelConfig`).
    cav_trainer: a CAV trainer of one's own instead of `concepts.cav_model`'s: an object with a
        `name` and `fit(positives, negatives, seeds) -> (directions, accuracies)`
        (`pipeline.scoring.trainers.CavTrainer`; the built-in ones are there too). It runs in
        the concepts stage's Ray tasks, so it must pickle; the run records `user:<name>@<digest>`.
    user_concepts: concepts of one's own, explained beside the discovered ones
        (`concepts.user`): a Parquet or CSV file, a pandas DataFrame or a pyarrow Table with
        columns concept, video_id, supervoxel_id (kept supervoxels of the run: its
        supervoxels/) and optionally target_class. A table is written to a file named by its
        digest in the temporary folder; the run keeps a copy (user_concepts.parquet).
    overrides: the other config groups, each a preset name (`segment="reference"`,
        `ray="cluster"`) or a dict of its keys (`clip={"num_frames": 32}`, `concepts={"k": 10}`):
        the README and `pipeline.config` list them with their defaults.

    A bad value raises ValueError naming the argument (`clip['num_frames'] = 0: must be >= 1`);
    an unknown key or preset raises it with the close matches.
    """
    import torch

    groups = [g for g in GROUPS if g != "model"]
    unknown = sorted(set(overrides) - set(groups))
    if unknown:
        raise TypeError(f"explain() got an unexpected keyword argument {unknown[0]!r}; config groups: {groups} "
                        "and model_options")
    if model_options is not None:
        if not isinstance(model_options, dict):
            raise ValueError(f"model_options = {model_options!r}: must be a dict of model settings")
        overrides = {**overrides, "model": dict(model_options)}
    overrides = _with_own(overrides, cav_trainer, user_concepts)
    module = model if isinstance(model, torch.nn.Module) else None
    if module is None and not isinstance(model, str):
        raise ValueError(f"model = {model!r}: must be a registry name or a torch.nn.Module")
    try:
        cfg = compose_config(videos, model if module is None else MODULE, output_dir, layers, stages, overrides)
        from pipeline.job import run_job

        show_progress()
        record = run_job(cfg, module, cav_trainer=cav_trainer)
    except ConfigError as e:
        raise ValueError(f"{argument_for(e.key, overrides)}{shown(e)}: {e.why}") from None
    return Run(record["run_dir"])


def _with_own(overrides: dict[str, Any], trainer: Any, user_concepts: Any) -> dict[str, Any]:
    """The overrides with `concepts.cav_model` naming a user's trainer (`user:<name>@<digest>`:
    the digest of the pickled trainer, its code and settings, goes into the fingerprint) and
    `concepts.user` the file of the user's concepts."""
    from pipeline.job import user_model

    if trainer is not None:
        overrides = with_group_key(overrides, "concepts", "cav_model", user_model(trainer))
    if user_concepts is not None:
        overrides = with_group_key(overrides, "concepts", "user", table_file(user_concepts))
    return overrides


def score_videos(run: Union[str, os.PathLike, "Run"], videos: Videos, output_dir: str, trust_run: bool = False,
                 **overrides: Any) -> "Run":
    """Explain new `videos` with a finished run's concepts, no rediscovery (`python -m
    pipeline.score`, see there); returns the scored folder as a `Run` (its voxel_importance,
    concept_presence and report). `overrides`: config groups as for `explain`; the model, clip,
    segment and activate settings are the run's, and another value for one raises ValueError.
    `trust_run`: needed when the run's model runs code on loading (a factory, TorchScript)."""
    from pipeline.score import pin_to_run, score_job, source_run

    try:
        source, c = source_run(run.path if isinstance(run, Run) else str(run), trust_run)
        cfg = compose_config(videos, c["model"]["name"], output_dir, None, None, overrides)
        default = compose_config(videos, c["model"]["name"], output_dir, None, None, {})
        cfg = pin_to_run(cfg, default, c, named_keys(overrides))
        show_progress()
        record = score_job(cfg, source)
    except ConfigError as e:
        raise ValueError(f"{argument_for(e.key, overrides)}{shown(e)}: {e.why}") from None
    return Run(record["run_dir"])


def _table_of(name: str, what: str) -> Any:
    """A `Run` attribute reading one dataset once (`Run.table(name)`)."""
    prop = cached_property(lambda self: self.table(name))
    prop.__doc__ = f"`table({name!r})`: {what}, as a DataFrame (read when first used)."
    return prop


def open_run(path: Union[str, os.PathLike]) -> "Run":
    """A finished (or partly finished) run, from its folder: a path or a filesystem URI."""
    root = str(path) if io.is_uri(str(path)) else os.path.abspath(os.path.expanduser(str(path)))
    if not io.exists(io.join(root, RUN_JSON)):
        raise FileNotFoundError(f"{root} is not a run folder (no {RUN_JSON})")
    return Run(root)


class Run:
    """A run folder read back: its tables as pandas DataFrames (read once, when first used),
    its maps as numpy arrays, and where its report is."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self.folder = RunFolder(self.path)

    def __repr__(self) -> str:
        counts = self.record.get("counts", {})
        return (f"Run({self.path!r}: {counts.get('videos_in', 0)} videos, {counts.get('concepts_found', 0)} concepts, "
                f"stages {list(self.record.get('stages', {}))})")

    @cached_property
    def record(self) -> dict[str, Any]:
        """run.json: the resolved config, versions, per-stage figures and counts."""
        return io.read_json(self.folder.path(RUN_JSON))

    def table(self, name: str, columns: Optional[list[str]] = None) -> Any:
        """Any output dataset by its name in the README's Outputs table (`"videos"`,
        `"supervoxels"`, `"concepts"`, ...), as a DataFrame."""
        datasets = {n.removesuffix(".parquet"): n for n in (VIDEOS, SUPERVOXELS, ACTIVATIONS, CLIP_ACTIVATIONS,
                                                             PREDICTIONS, CONCEPTS, CONCEPT_IMPORTANCE,
                                                             CONCEPT_MEMBERS, TCAV, VOXEL_IMPORTANCE, EVALUATION,
                                                             CONCEPT_PRESENCE, CONCEPT_SENSITIVITY)}
        datasets.update({n.removesuffix(".parquet").replace("/", "_"): n for n in (
            ATLAS_CONCEPTS, ATLAS_CLASS_CONCEPTS, ATLAS_ASSIGNMENTS, ATLAS_LINKS)})
        if name not in datasets:
            raise KeyError(f"no dataset {name!r}; datasets: {sorted(datasets)}")
        if not self.folder.exists(datasets[name]):
            raise FileNotFoundError(f"{self.path} has no {datasets[name]} (its stage has not run)")
        return self.folder.read(datasets[name], columns=columns).to_pandas()

    videos = _table_of("videos", "one row per input video: its label, status and the reason of a failure")
    supervoxels = _table_of("supervoxels", "one row per supervoxel: its video, box, size and share")
    predictions = _table_of("predictions", "the model's prediction on each video's clip")

    @cached_property
    def concepts(self) -> Any:
        """The concepts with what the evaluate and atlas stages measured of them (their causal
        importance, their global concept): concepts.parquet joined with those stages' tables
        (`RunFolder.concept_view`; `table("concepts")` is the file alone)."""
        if not self.folder.exists(CONCEPTS):
            raise FileNotFoundError(f"{self.path} has no {CONCEPTS} (its stage has not run)")
        return self.folder.concept_view().to_pandas()

    concept_members = _table_of(CONCEPT_MEMBERS, "one row per member supervoxel of each concept")
    tcav = cached_property(lambda self: self.table(
        TCAV, [n for n in schemas.TCAV.names if n != "direction"]))
    tcav.__doc__ = ("`table('tcav_scores')` without the CAVs' directions (`cavs()` has them): the "
                    "TCAV scores of every concept against every random set, as a DataFrame.")
    evaluation = _table_of(EVALUATION, "the deletion and insertion curves and their areas")
    concept_sensitivity = _table_of(CONCEPT_SENSITIVITY, "a scored run's: each video's sensitivity to the "
                                    "concepts of its predicted class, along the run's saved CAVs")

    def activations(self, layer: Optional[str] = None, target_class: Optional[str] = None,
                    clips: bool = False) -> Any:
        """Activation vectors, one row per (supervoxel, layer) (`clips=True`: per (whole clip,
        layer), with the class-logit gradients), of one layer or all, one class's videos or all:
        only that partition is read."""
        keys = {k: v for k, v in (("layer", layer), ("target_class", target_class)) if v is not None}
        if target_class is not None and layer is None:
            raise ValueError("activations(target_class=...) needs a layer (the partitions are layer=/class=)")
        name = f"{CLIP_ACTIVATIONS if clips else ACTIVATIONS}/{partition(**keys)}" if keys else (
            CLIP_ACTIVATIONS if clips else ACTIVATIONS)
        return self.folder.read(name).to_pandas()

    def voxel_importance(self, video_id: str, layer: Optional[str] = None, score: str = "tcav",
                         target_class: Optional[str] = None) -> np.ndarray:
        """A scoring video's voxel importance, float32 [T, H, W] in clip coordinates: `score`
        `tcav` (the paper's) or `causal`; `layer` None: the first explained layer."""
        return self.folder.voxel_importance(video_id, layer=layer, target_class=target_class, score=score)

    def supervoxel_mask(self, video_id: str, supervoxel_id: int) -> np.ndarray:
        """The voxels of one supervoxel, bool [T, H, W] in clip coordinates."""
        return self.folder.supervoxel_mask(video_id, supervoxel_id)

    @cached_property
    def atlas(self) -> Any:
        """The run's global concept atlas, opened for search (`pipeline.run_search.Atlas`)."""
        from pipeline.run_search import Atlas

        return Atlas(self.folder)

    def nearest(self, query: Any, k: int = 10, layer: Optional[str] = None, nprobe: Optional[int] = None) -> Any:
        """The k supervoxels of the corpus nearest `query` in the atlas's index, nearest first,
        as a DataFrame (rank, layer, video_id, supervoxel_id, target_class, global_concept,
        distance). `query`: a vector; (video_id, supervoxel_id), itself left out; a global
        concept (int, from its centroid); or a concept's name in concepts.parquet (from its
        centroid, at its layer). `layer`: needed when several layers have an atlas and the
        query does not say which."""
        import pandas as pd

        from pipeline.run_search import COLUMNS

        return pd.DataFrame(self.atlas.nearest(query, k=k, layer=layer, nprobe=nprobe), columns=list(COLUMNS))

    @property
    def report_path(self) -> Optional[str]:
        """report/index.html, when the report stage has run."""
        return self.folder.path(REPORT_INDEX) if self.folder.exists(REPORT_INDEX) else None

    def cavs(self, target_class: Optional[str] = None, layer: Optional[str] = None) -> Any:
        """The run's CAVs, one row per (class, layer, concept, random set) as tcav_scores/ keeps
        them: `direction` (unit vector float32 [C], toward the concept), `cav_accuracy` (held
        out), `trainer`, and the TCAV score it gave; the random baseline's as concept
        "random". `target_class`, `layer`: only those (only that class's partition is read)."""
        import pyarrow.compute as pc

        from pipeline.run_names import partition

        if target_class is not None:
            keys = {"target_class": target_class, **({"layer": layer} if layer else {})}
            return self.folder.read(f"{TCAV}/{partition(**keys)}").to_pandas()
        where = None if layer is None else pc.field("layer") == layer
        return self.folder.read(TCAV, filter=where).to_pandas()

    def concept_clips(self, concept: str, k: int = 3) -> list[Any]:
        """The `k` exemplars of a concept (its name in `concepts`), nearest the centroid first,
        as the report shows them: `ConceptClip`s with `frames` (the clip as the run read it,
        uint8 [T, H, W, 3]), `mask` (the supervoxel, bool [T, H, W]), `video_id`,
        `supervoxel_id`, `distance`, and `outlined()` (the supervoxel outlined, the rest dimmed)."""
        from pipeline.concept_clips import concept_clips

        return concept_clips(self.folder, self.record["config"]["clip"], concept, k)

    def export_concept(self, concept: str, path: str, k: int = 3) -> str:
        """Write a concept's `k` exemplars, outlined and side by side, as `path`: .mp4 (H.264
        4:4:4), .gif or .webp (looping); returns `path`."""
        from pipeline.concept_clips import export_concept

        frame_ms = int(self.record["config"].get("report", {}).get("frame_ms", 125))
        return export_concept(self.concept_clips(concept, k), path, frame_ms)

    def show(self, target_class: str) -> Any:
        """A class's concepts inline in a notebook: per layer, the ranking that holds under
        deletion (as the report's lead) and the concepts that matter by it with their clips."""
        from pipeline.concept_clips import ClassView

        return ClassView(self.folder, self.record["config"], target_class)

    def _repr_html_(self) -> str:
        """The run in a notebook: its classes with their concept counts, and its report."""
        from pipeline.report.render import esc

        concepts = self.table("concepts") if self.folder.exists(CONCEPTS) else None
        rows = "" if concepts is None else "".join(
            f"<tr><td>{esc(k)}</td><td>{len(g)}</td><td>{int(g.significant.sum())}</td></tr>"
            for k, g in concepts.groupby("target_class"))
        report = f'<p>report: <a href="{esc(self.report_path)}">{esc(self.report_path)}</a></p>' \
            if self.report_path else ""
        return (f"<p><b>{esc(repr(self))}</b></p><table><tr><th>class</th><th>concepts</th>"
                f"<th>significant</th></tr>{rows}</table>{report}<p>run.show(class) shows a "
                "class's concepts with their clips</p>")
