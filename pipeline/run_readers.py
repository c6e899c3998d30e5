"""The readers of a finished run: the concepts with what later stages measured of them (one
view over the tables of three stages), and those that take one video at a time: where its label
volumes are, a supervoxel's voxels, a video's voxel importance. `pipeline.run_folder.RunFolder`
has them."""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import io, schemas
from pipeline.run_names import (ATLAS_LINKS, ATLAS_MANIFEST, CONCEPT_IMPORTANCE, CONCEPT_METRICS, CONCEPTS, DONE,
                                LABEL_VOLUMES, SUPERVOXELS, VIDEOS, VOXEL_IMPORTANCE, partition)

log = logging.getLogger("pipeline")
_warned: set[tuple[str, str]] = set()  # (run folder, table): said once per process


def _stale(root: str, name: str, stage: str) -> None:
    if (root, name) not in _warned:
        _warned.add((root, name))
        log.warning("%s: %s was made from other concepts (the concepts stage ran after %s): it is left out until "
                    "%s runs again", root, name, stage, stage)


class RunReaders:
    """Mixed into `RunFolder` (which gives `root`, `path`, `read`, `exists`, `video_rows`)."""

    root: str
    _index: Optional[dict[str, tuple[str, int]]]

    def concept_view(self, columns: Optional[list[str]] = None) -> pa.Table:
        """The run's concepts with what the later stages measured of them (schemas.CONCEPT_VIEW,
        or its `columns`): concepts.parquet joined on `concept` with evaluate's
        concept_importance.parquet, where it was measured on these concepts, and with each
        concept's largest link of atlas/concept_links/. Null where a stage has not run."""
        wanted = list(columns or schemas.CONCEPT_VIEW.names)
        own = [c for c in wanted if c in schemas.CONCEPTS.names]
        concepts = self.read(CONCEPTS, columns=list(dict.fromkeys([*own, "concept", "rank", "tcav_mean"])))
        names = concepts.column("concept").to_pylist()
        later: dict[str, dict[str, Any]] = {}  # column -> concept -> value
        if {"causal_importance", "causal_importance_masking"} & set(wanted) and self.exists(CONCEPT_IMPORTANCE):
            importance = self.read(CONCEPT_IMPORTANCE)
            if self._of_these_concepts(importance.schema.metadata, CONCEPT_IMPORTANCE, "evaluate", concepts):
                for column in ("causal_importance", "causal_importance_masking"):
                    later[column] = dict(zip(importance.column("concept").to_pylist(),
                                             importance.column(column).to_pylist()))
        if {"global_concept", "global_concept_share"} & set(wanted):
            top: dict[str, tuple[int, float]] = {}
            links = self.concept_links(concepts, ["concept", "global_concept", "share"])
            for link in links:  # the largest share, the first of equal ones
                name = link["concept"]
                if name not in top or link["share"] > top[name][1]:
                    top[name] = (link["global_concept"], link["share"])
            later["global_concept"] = {c: g for c, (g, _) in top.items()}
            later["global_concept_share"] = {c: share for c, (_, share) in top.items()}
        fields = [schemas.CONCEPT_VIEW.field(c) for c in wanted]
        return pa.Table.from_arrays([concepts.column(f.name) if f.name in own else
                                     pa.array([later.get(f.name, {}).get(n) for n in names], f.type)
                                     for f in fields], schema=pa.schema(fields))

    def metrics(self, name: str) -> dict[str, dict[Optional[str], dict[str, Any]]]:
        """A stage's figures per class and layer (metrics/<stage>.parquet, schemas.METRICS):
        {class: {layer (None: the class as a whole): {metric: value}}}; {} before the stage ran,
        and for evaluate's when it measured other concepts than concepts.parquet's."""
        if not self.exists(name):
            return {}
        table = self.read(name)
        if name != CONCEPT_METRICS and not self._of_these_concepts(table.schema.metadata, name, "evaluate"):
            return {}
        return schemas.metric_figures(table)

    def concept_links(self, concepts: Optional[pa.Table] = None,
                      columns: Optional[list[str]] = None) -> list[dict[str, Any]]:
        """atlas/concept_links/ rows (or their `columns`) when the atlas linked the concepts
        concepts.parquet holds now (`concepts`: that table, if already read); [] before the atlas
        ran or after a later concepts stage."""
        if not io.part_files(self.path(ATLAS_LINKS)) or not self.exists(ATLAS_MANIFEST):
            return []
        manifest = io.read_json(self.path(ATLAS_MANIFEST))
        linked = {b"concepts": str(manifest.get("concepts") or "").encode()}
        if not self._of_these_concepts(linked, ATLAS_LINKS, "atlas", concepts):
            return []
        return self.read(ATLAS_LINKS, columns=columns).to_pylist()

    def _of_these_concepts(self, metadata: Optional[dict[bytes, bytes]], name: str, stage: str,
                           concepts: Optional[pa.Table] = None) -> bool:
        """Whether a table derived from the concepts (its `concepts` digest in `metadata`) was
        made from those concepts.parquet holds now; warns once when not."""
        if concepts is None:
            concepts = self.read(CONCEPTS, columns=["concept", "rank", "tcav_mean"])
        if (metadata or {}).get(b"concepts", b"").decode() == schemas.concepts_digest(concepts):
            return True
        _stale(self.root, name, stage)
        return False

    def actor_concepts(self) -> dict[tuple[str, str], str]:
        """Each (class, layer)'s actor concept on a synthetic corpus: the concept whose members
        lie most inside the actor (the concepts stage's ground truth); {} elsewhere."""
        return {(k, layer): figures["ground_truth.actor_concept"]
                for k, layers in self.metrics(CONCEPT_METRICS).items() for layer, figures in layers.items()
                if layer is not None and figures.get("ground_truth.actor_concept")}

    def label_index(self) -> dict[str, tuple[str, int]]:
        """Where each segmented video's label volumes are: video_id -> (part file name, row
        group), from the segment stage's markers (read once per RunFolder)."""
        if self._index is None:
            files = io.part_files(self.path(DONE, "segment"))
            t = io.read_files(files, columns=["video_id", "part", "row_group", "status"]) if files else None
            self._index = {} if t is None else {
                v: (p, g) for v, p, g, s in zip(*(t.column(c).to_pylist() for c in ("video_id", "part", "row_group",
                                                                                     "status")))
                if s == schemas.OK and g is not None}
        return self._index

    def locate(self, video_id: str) -> tuple[str, int]:
        where = self.label_index().get(video_id)
        if where is None:
            raise KeyError(f"video {video_id!r} has no label volumes in {self.root} (not segmented, or it failed)")
        return where

    def label_volumes(self, video_ids: Sequence[str],
                      where: Optional[dict[str, tuple[str, int]]] = None) -> dict[str, np.ndarray]:
        """The label volumes uint16 [R, L, H, W] of several videos: one row group each (`where`:
        their locations, as `label_index` gives them; read from the markers when not given)."""
        from pipeline.segmentation.supervoxels import stack_label_volumes

        out: dict[str, np.ndarray] = {}
        by_part: dict[str, list[tuple[str, int]]] = {}
        for v in video_ids:
            part, group = (where or {}).get(v) or self.locate(v)
            by_part.setdefault(part, []).append((v, group))
        for part, wanted in by_part.items():
            table = io.read_row_groups(self.path(LABEL_VOLUMES, part), sorted({g for _, g in wanted}))
            out.update(stack_label_volumes(table.to_pylist()))
        return {v: out[v] for v in video_ids if v in out}

    def label_volume(self, video_id: str, resolution: int) -> np.ndarray:
        """The SLIC label volume uint16 [L, H, W] of one video at one resolution."""
        volumes = self.label_volumes([video_id])[video_id]
        if not 0 <= resolution < len(volumes):
            raise KeyError(f"no label volume for video {video_id!r} at resolution {resolution} in {self.root}")
        return volumes[resolution]

    def supervoxel_mask(self, video_id: str, supervoxel_id: int) -> np.ndarray:
        """The voxels of one supervoxel: bool [T, H, W] in clip coordinates (the clip's frames
        are source frames `clip_frame_indices` of videos.parquet, resized to clip_height x
        clip_width)."""
        part, group = self.locate(video_id)
        t = io.read_row_groups(self.path(SUPERVOXELS, part), [group], columns=["supervoxel_id", "resolution", "label"])
        t = t.filter(pc.equal(t.column("supervoxel_id"), int(supervoxel_id)))
        if t.num_rows == 0:
            raise KeyError(f"no supervoxel {supervoxel_id} of video {video_id!r} in {self.root}")
        resolution, label = t.column("resolution")[0].as_py(), t.column("label")[0].as_py()
        return self.label_volume(video_id, resolution) == label

    def voxel_importance(self, video_id: str, layer: Optional[str] = None, target_class: Optional[str] = None,
                         score: str = "tcav") -> np.ndarray:
        """Voxel importance of a scored video: float32 [T, H, W] in clip coordinates.

        layer: an explained layer (None: the first the run explained); target_class: the class
        whose concepts score it (None: the one it was scored for, its own); score: `tcav` (the
        paper's: each supervoxel takes its concept's mean TCAV score) or `causal` (its concept's
        causal importance, from the evaluate stage).
        """
        from pipeline.scoring.voxel_importance import causal_scores, importance_map

        if score not in ("tcav", "causal"):
            raise ValueError(f"score must be 'tcav' or 'causal', got {score!r}")
        if target_class is None:
            rows = self.video_rows([video_id]) if self.exists(VIDEOS) else []
            target_class = rows[0]["label"] if rows else None
        rows = self.voxel_importance_rows(video_id, target_class)
        if not rows:
            raise KeyError(f"no voxel importance for video {video_id!r} in {self.root} (only scoring videos have one)")
        layers = list(dict.fromkeys(r["layer"] for r in rows))
        chosen = layer if layer is not None else layers[0]
        rows = [r for r in rows if r["layer"] == chosen]
        if not rows:
            raise KeyError(f"no voxel importance for video {video_id!r} at layer {chosen!r}; layers: {layers}")
        row = rows[0]
        scores = row["scores"]
        if score == "causal":
            causal = {r["concept"]: r["causal_importance"]
                      for r in self.concept_view(["concept", "causal_importance"]).to_pylist()}
            if not any(v is not None for v in causal.values()):
                raise KeyError(f"{self.root} has no causal importance yet: run the evaluate stage")
            scores = causal_scores(row["concepts"], causal)
        return importance_map(self.label_volumes([video_id])[video_id], row["supervoxel_ids"], scores)

    def voxel_importance_rows(self, video_id: str, target_class: Optional[str]) -> list[dict[str, Any]]:
        """A video's voxel-importance rows: within its class's partitions, the row group whose
        statistics hold it (footers, then one row group per layer)."""
        root = self.path(VOXEL_IMPORTANCE)
        files = io.part_files(io.join(root, partition(target_class=target_class))) if target_class else []
        files = files or io.part_files(root)
        if not files:
            return []
        return io.read_files(files, filter=pc.field("video_id") == video_id).to_pylist()
