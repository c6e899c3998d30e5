"""The run folder's names: every output's folder or file (see docs/outputs.md), and the
partition folder a dataset's rows go to for a layer and a class (`partition`)."""

from __future__ import annotations

import hashlib
from typing import Optional
from urllib.parse import quote

VIDEOS = "videos.parquet"
SUPERVOXELS = "supervoxels"
LABEL_VOLUMES = "label_volumes"
ACTIVATIONS = "activations"
PREDICTIONS = "predictions"
CONCEPTS = "concepts.parquet"
CONCEPT_IMPORTANCE = "concept_importance.parquet"  # the evaluate stage's, one row per concept
CONCEPT_METRICS, EVALUATE_METRICS = "metrics/concepts.parquet", "metrics/evaluate.parquet"  # figures per class
CONCEPT_MEMBERS = "concept_members"
USER_CONCEPTS = "user_concepts.parquet"  # the user's own concepts, as the concepts stage read them
TCAV = "tcav_scores"
VOXEL_IMPORTANCE = "voxel_importance"
EVALUATION = "evaluation"
REPORT, REPORT_INDEX, REPORT_ATLAS = "report", "report/index.html", "report/atlas.html"
REPORT_CLASSES = "report/classes"  # a page per class, when the run has many
CONCEPT_PRESENCE = "concept_presence"  # a scored run's (pipeline.score): <class>/<layer>/ parts
CONCEPT_SENSITIVITY = "concept_sensitivity"  # a scored run's: each video against the saved CAVs
RUN_JSON = "run.json"
LEASE = "lease.json"  # the driver holding the folder (pipeline.lease)
CLIP_ACTIVATIONS = "clip_activations"
RANDOMISED_GRADIENTS = "randomised_gradients"
DONE = "_done"  # _done/<stage>/part-<run>-<unit>.parquet: the markers of finished units
UNLABELLED = "_unlabelled"  # the class partition of a video without a label
# the atlas stage's: <layer>/ (the trained index), <layer>/<class>/ (assignments, counts, links),
# <layer>/<class>.faiss (a shard, until merged), <layer>.faiss (the index), the tables, the manifest
ATLAS_TRAINED, ATLAS_ASSIGNMENTS, ATLAS_COUNTS = "atlas/_train", "atlas/assignments", "atlas/_counts"
ATLAS_SHARDS, ATLAS_INDEX, ATLAS_LINKS = "atlas/_shards", "atlas/index", "atlas/concept_links"
ATLAS_CONCEPTS, ATLAS_CLASS_CONCEPTS = "atlas/concepts.parquet", "atlas/class_concepts.parquet"
ATLAS_MANIFEST = "atlas/atlas.json"

# A partition folder's name is at most this many bytes: file systems allow 255, and a class
# name percent-encoded can take three times its UTF-8 bytes.
MAX_NAME_BYTES = 120


def partition(**keys: Optional[str]) -> str:
    """The partition folder of a dataset for these keys, in the order given (`layer`,
    `target_class`): one folder level per key, named by its value, percent-encoded (class names
    hold spaces, slashes, apostrophes); a value None (a video without a label) is `_unlabelled`.
    Plain names, not Hive's `key=value`: a reader that guesses Hive partitions (pandas, DuckDB)
    would add the keys again as columns. A name longer than `MAX_NAME_BYTES` encoded keeps a
    readable prefix and ends in `~` and a digest of the whole value (the class of every row is
    in videos.parquet and predictions/)."""
    def name(v: Optional[str]) -> str:
        if v is None:
            return UNLABELLED
        q = quote(str(v), safe="")
        if q[:1] in (".", "_"):  # never "." or "..", never hidden, never the unlabelled folder
            q = f"%{ord(q[0]):02X}" + q[1:]
        if len(q) > MAX_NAME_BYTES:
            head = q[:MAX_NAME_BYTES - 18]
            head = head[:head.rfind("%")] if "%" in head[-2:] else head  # not in the middle of an escape
            q = f"{head}~{hashlib.sha256(str(v).encode()).hexdigest()[:16]}"
        return q

    return "/".join(name(v) for v in keys.values())
