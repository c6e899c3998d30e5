"""Search a finished run's atlas: the supervoxels nearest a vector, a supervoxel, a global
concept or a per-class concept, from the layer's FAISS index (atlas/index/<layer>.faiss) and
the assignments that say which video, supervoxel and class each id is.

    from pipeline import open_run
    run = open_run("outputs/synthetic-demo")
    run.nearest(("advance/v0000", 3), k=10, layer="layer2")  # (video_id, supervoxel_id)
    run.nearest(7, layer="layer2")                           # global concept 7's centroid
    run.nearest("advance/layer2/concept1")                   # a concept of concepts.parquet
"""

from __future__ import annotations

import numbers
from typing import Any, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import io
from pipeline.atlas import build
from pipeline.run_folder import (ACTIVATIONS, ATLAS_ASSIGNMENTS, ATLAS_MANIFEST as MANIFEST, CONCEPTS, VIDEOS,
                                 RunFolder, partition)

COLUMNS = ("rank", "layer", "video_id", "supervoxel_id", "target_class", "global_concept", "distance")

Query = Union[np.ndarray, list, tuple, int, str]


class Atlas:
    """A run's atlas, opened for search (each layer's index is read once, when first used)."""

    def __init__(self, folder: RunFolder) -> None:
        self.folder = folder
        if not folder.exists(MANIFEST):
            raise FileNotFoundError(f"{folder.root} has no atlas ({MANIFEST}): run the atlas stage "
                                    "(run.stages=[atlas], after concepts)")
        self.manifest = io.read_json(folder.path(MANIFEST))
        self._indexes: dict[str, Any] = {}

    @property
    def layers(self) -> list[str]:
        return list(self.manifest["layers"])

    def index(self, layer: str) -> Any:
        if layer not in self._indexes:
            info = self._layer(layer)
            self._indexes[layer] = build.load(self.folder.path(info["file"]), mmap=True)
        return self._indexes[layer]

    def _layer(self, layer: Optional[str]) -> dict[str, Any]:
        if layer is None:
            if len(self.layers) != 1:
                raise ValueError(f"the atlas has layers {self.layers}: say which (layer=...)")
            layer = self.layers[0]
        if layer not in self.manifest["layers"]:
            raise KeyError(f"no atlas for layer {layer!r}; layers: {self.layers}")
        return {"layer": layer, **self.manifest["layers"][layer]}

    def nearest(self, query: Query, k: int = 10, layer: Optional[str] = None,
                nprobe: Optional[int] = None) -> list[dict[str, Any]]:
        """The k supervoxels nearest `query`, nearest first: rows of COLUMNS (distance: L2, in the
        atlas's geometry). `query`: a vector; (video_id, supervoxel_id), itself left out; a
        global concept (int), searched from its centroid; or a concept of concepts.parquet (its
        name), searched from its centroid at its own layer."""
        if k < 1:
            raise ValueError(f"k = {k}: must be >= 1")
        exclude = None
        if isinstance(query, str):
            vector, layer = self._concept_centroid(query)
        elif isinstance(query, numbers.Integral) and not isinstance(query, bool):
            info = self._layer(layer)
            layer = info["layer"]
            if not 0 <= int(query) < info["k"]:
                raise ValueError(f"global concept {query}: the atlas of {layer} has 0..{info['k'] - 1}")
            vector = build.centroids_of(self.index(layer))[int(query)]
        elif isinstance(query, tuple) and len(query) == 2 and isinstance(query[0], str):
            layer = self._layer(layer)["layer"]
            exclude = (query[0], int(query[1]))
            vector = self._supervoxel_vector(layer, *exclude)
        else:
            vector = np.asarray(query, dtype=np.float32).reshape(-1)
            layer = self._layer(layer)["layer"]
        info = self._layer(layer)
        if vector.shape[0] != info["dim"]:
            raise ValueError(f"a vector of {vector.shape[0]} values; the atlas of {layer} has {info['dim']}")
        x = build.prepare(vector[None, :], info["spherical"])
        index = self.index(layer)
        index.nprobe = int(min(nprobe or info["nprobe"], info["k"]))
        sq, ids = index.search(x, k + (exclude is not None))
        found = [(int(i), float(np.sqrt(max(d, 0.0)))) for i, d in zip(ids[0], sq[0]) if i >= 0]
        rows = self._rows(layer, [i for i, _ in found])
        out = []
        for (i, dist), row in zip(found, rows):
            if exclude is not None and (row["video_id"], row["supervoxel_id"]) == exclude:
                continue
            out.append({"rank": len(out) + 1, "layer": layer, **row, "distance": dist})
        return out[:k]

    def _rows(self, layer: str, ids: list[int]) -> list[dict[str, Any]]:
        """video_id, supervoxel_id, target_class and global_concept of atlas ids: one row group
        of one partition's assignments per distinct (partition, group)."""
        ordinals, rows = build.split_ids(np.asarray(ids, dtype=np.int64))
        partitions = self.manifest["layers"][layer]["partitions"]
        groups: dict[tuple[int, int], pa.Table] = {}
        out = []
        for o, r in zip(ordinals.tolist(), rows.tolist()):
            g = r // build.ROWS_PER_GROUP
            if (o, g) not in groups:
                part = partitions[o]["partition"]
                files = io.part_files(self.folder.path(ATLAS_ASSIGNMENTS, partition(layer=layer), part))
                groups[(o, g)] = io.read_row_groups(files[0], [g], columns=["video_id", "supervoxel_id",
                                                                             "target_class", "global_concept"])
            t = groups[(o, g)]
            i = r - g * build.ROWS_PER_GROUP
            out.append({c: t.column(c)[i].as_py() for c in ("video_id", "supervoxel_id", "target_class",
                                                            "global_concept")})
        return out

    def _supervoxel_vector(self, layer: str, video_id: str, supervoxel_id: int) -> np.ndarray:
        videos = self.folder.read(VIDEOS, columns=["video_id", "label"], filter=pc.field("video_id") == video_id)
        if not videos.num_rows:
            raise KeyError(f"no video {video_id!r} in {self.folder.root}")
        label = videos.column("label")[0].as_py()
        t = self.folder.read(f"{ACTIVATIONS}/{partition(layer=layer, target_class=label)}", columns=["vector"],
                             filter=(pc.field("video_id") == video_id) & (pc.field("supervoxel_id") == supervoxel_id))
        if not t.num_rows:
            raise KeyError(f"video {video_id!r} has no supervoxel {supervoxel_id} with a vector at {layer}")
        return np.asarray(t.column("vector")[0].as_py(), dtype=np.float32)

    def _concept_centroid(self, concept: str) -> tuple[np.ndarray, str]:
        t = self.folder.read(CONCEPTS, columns=["concept", "layer", "centroid"], filter=pc.field("concept") == concept)
        if not t.num_rows:
            raise KeyError(f"no concept {concept!r} in {self.folder.path(CONCEPTS)}")
        return np.asarray(t.column("centroid")[0].as_py(), dtype=np.float32), t.column("layer")[0].as_py()
