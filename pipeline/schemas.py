"""The Parquet schemas of every output dataset, in one place (see README, "Outputs")."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import __version__

# The run folder's output format: bumped when a table's schema or meaning, or what a stage's
# fingerprint holds, changes. run.json and every Parquet file of a run record it; a run folder
# of another format is refused before any work (`pipeline.run_folder.RunFolder.check_format`).
FORMAT_VERSION = 3  # 3: tcav_scores/ keeps each CAV (direction, trainer)


def file_metadata() -> dict[bytes, bytes]:
    """The key-value metadata every Parquet file of a run carries: the output format and the
    version of the code that wrote it."""
    return {b"ace3d.format": str(FORMAT_VERSION).encode(), b"ace3d.version": __version__.encode()}


# Status of a video in videos.parquet.
OK = "ok"
FAILED = "failed"

VIDEOS = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("split", pa.string()),
        pa.field("status", pa.string(), nullable=False),  # ok | failed
        pa.field("error", pa.string()),  # why it failed (null when ok)
        pa.field("num_frames", pa.int64()),  # frames in the source video stream
        pa.field("fps", pa.float64()),
        pa.field("height", pa.int32()),  # source frame size
        pa.field("width", pa.int32()),
        # Source frame index of every clip frame: clip frame i is source frame clip_frame_indices[i].
        pa.field("clip_frame_indices", pa.list_(pa.int64())),
        pa.field("clip_height", pa.int32()),  # the clip's frames are resized to this size
        pa.field("clip_width", pa.int32()),
        pa.field("failed_stage", pa.string()),  # the stage that failed it (null when ok)
        # Failed: whether a rerun tries it again (worker lost, I/O error, time limit; not: not a video)
        pa.field("retryable", pa.bool_()),
        pa.field("size", pa.int64()),  # the input file's bytes and modification time, when listed
        pa.field("mtime_ns", pa.int64()),
        # What the outputs were made from: "stat:<size>:<mtime_ns>", or "sha256:<hex>" with
        # dataset.identity=sha256; a rerun redoes a video whose identity changed.
        pa.field("identity", pa.string()),
    ]
)

# supervoxels/: one row per candidate supervoxel of every segmented video. Those with
# status "kept" are explained; the others say why not. The mask of a supervoxel is
# `label_volumes[(video_id, resolution)] == label` (see pipeline.io.load_supervoxel_mask).
SUPERVOXELS = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("supervoxel_id", pa.int64(), nullable=False),  # resolution << 16 | label
        pa.field("resolution", pa.int32()),  # index into segment.n_segments
        pa.field("n_segments", pa.int32()),
        pa.field("label", pa.int32()),  # value in that resolution's label volume
        pa.field("t0", pa.int32()),  # half-open bounding box in clip coordinates
        pa.field("t1", pa.int32()),
        pa.field("y0", pa.int32()),
        pa.field("y1", pa.int32()),
        pa.field("x0", pa.int32()),
        pa.field("x1", pa.int32()),
        pa.field("volume", pa.int64()),  # voxels
        pa.field("status", pa.string()),  # kept | dropped_small | dropped_duplicate | dropped_short
        pa.field("reason", pa.string()),
        pa.field("max_iou", pa.float32()),  # best IoU with a supervoxel kept before it
    ]
)

# label_volumes/: one row per (video, resolution): the SLIC label volume, uint16 C-order bytes.
LABEL_VOLUMES = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("resolution", pa.int32()),
        pa.field("n_segments", pa.int32()),
        pa.field("shape", pa.list_(pa.int32(), 3)),  # L, H, W
        pa.field("labels", pa.binary()),
    ]
)

# activations/<layer>/<class>/: one row per (kept supervoxel, layer); clip_activations/<layer>/<class>/
# (same schema): one row per (whole clip, layer), supervoxel_id -1, with the gradient.
ACTIVATIONS = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("supervoxel_id", pa.int64(), nullable=False),  # -1: the whole clip
        pa.field("layer", pa.string(), nullable=False),
        pa.field("vector", pa.list_(pa.float32())),  # layer output averaged over time, space, windows
        pa.field("n_windows", pa.int32()),
        # Whole clips of videos whose label is a model class: d logit[gradient_class] / d layer
        # output, averaged over time and space (and windows). Null elsewhere.
        pa.field("gradient", pa.list_(pa.float32())),
        pa.field("gradient_class", pa.int32()),
    ]
)

# predictions/: one row per activated video: what the model says about the whole clip.
PREDICTIONS = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("label_index", pa.int32()),  # -1: the label is not one of the model's classes
        pa.field("logits", pa.list_(pa.float32())),
        pa.field("predicted_index", pa.int32()),
        pa.field("predicted_class", pa.string()),
        pa.field("correct", pa.bool_()),
        pa.field("supervoxels", pa.int32()),  # supervoxels with vectors
        pa.field("seconds", pa.float32()),  # time in the actor, clip decode excluded
        pa.field("device", pa.string()),
    ]
)

# concepts.parquet: one row per accepted concept of a (class, layer).
CONCEPTS = pa.schema(
    [
        pa.field("target_class", pa.string()), pa.field("layer", pa.string()), pa.field("concept", pa.string()),
        pa.field("rank", pa.int32()),  # 1 = highest mean TCAV score in its (class, layer)
        pa.field("size", pa.int32()),  # members kept (at most concepts.max_videos)
        pa.field("num_videos", pa.int32()),  # distinct discovery videos among them
        pa.field("tcav_mean", pa.float64()), pa.field("tcav_std", pa.float64()),
        pa.field("p_value", pa.float64()), pa.field("significant", pa.bool_()),
        pa.field("cav_accuracy", pa.float64()),  # mean hold-out accuracy of its CAVs
        # the graded TCAV score (Captum's magnitude: the positive share of the directional
        # derivatives' mass over the scoring videos), over the random sets, and its test
        pa.field("tcav_magnitude_mean", pa.float64()), pa.field("tcav_magnitude_std", pa.float64()),
        pa.field("magnitude_p_value", pa.float64()), pa.field("magnitude_significant", pa.bool_()),
        # the share of bootstrap resamples of the discovery videos in which it reappears
        # (concepts.stability; null when off, and for a user's concept)
        pa.field("stability", pa.float64()),
        pa.field("radius", pa.float64()),  # largest member distance to the centroid
        pa.field("rule", pa.string()),  # the acceptance rule that held ("user concept": a user's)
        pa.field("centroid", pa.list_(pa.float32())),
        pa.field("class_accuracy", pa.float64()),  # the model's accuracy on the class's scoring videos
        pa.field("class_recognised", pa.bool_()),  # that accuracy is significantly above chance
        # the mean TCAV score again with every weight after the layer re-initialised
        # (concepts.randomisation_check; null when off)
        pa.field("tcav_mean_randomised", pa.float64()),
    ]
)

_CONCEPT_KEY = [pa.field("target_class", pa.string()), pa.field("layer", pa.string()), pa.field("concept", pa.string())]

# concept_importance.parquet (the evaluate stage's): one row per concept of concepts.parquet.
# Its schema metadata `concepts` is the digest of the concepts it was measured on
# (`concepts_digest`): a reader joins it to those concepts only.
CONCEPT_IMPORTANCE = pa.schema(
    [
        *_CONCEPT_KEY,
        # the mean drop in class probability when the concept's voxels are removed from the
        # class's scoring videos
        pa.field("causal_importance", pa.float64()),
        # the same by randomised concept masking (evaluate.masking): the mean class probability
        # over random concept subsets removed at once that keep it, minus over those that remove it
        pa.field("causal_importance_masking", pa.float64()),
    ]
)

# The concepts as `open_run(...).concepts`, the report and the scoring of new videos read them:
# concepts.parquet joined with concept_importance.parquet (null before the evaluate stage) and
# each concept's global concept, the one of atlas/concept_links/ holding most of its members,
# with that share (null before the atlas stage). `RunFolder.concept_view` builds it.
CONCEPT_VIEW = pa.schema([*CONCEPTS, *list(CONCEPT_IMPORTANCE)[3:],
                          pa.field("global_concept", pa.int32()), pa.field("global_concept_share", pa.float64())])


def concepts_digest(concepts: pa.Table) -> str:
    """A digest of a concepts table's concepts (name, rank, mean TCAV score): what the tables
    derived from it (evaluate's) record, and what a reader checks before joining them."""
    rows = zip(*(concepts.column(c).to_pylist() for c in ("concept", "rank", "tcav_mean")))
    return hashlib.sha256(json.dumps(sorted(rows)).encode()).hexdigest()

# concept_members/<class>/<layer>/: one row per member supervoxel of a concept.
CONCEPT_MEMBERS = pa.schema([
    pa.field("target_class", pa.string()), pa.field("layer", pa.string()), pa.field("concept", pa.string()),
    pa.field("video_id", pa.string()), pa.field("supervoxel_id", pa.int64()), pa.field("distance", pa.float64())])

# user_concepts.parquet: the user's concepts the run explained (concepts.user's table, as read),
# a row per member; target_class null: the concept joins every class's explanation.
USER_CONCEPTS = pa.schema([
    pa.field("concept", pa.string()), pa.field("video_id", pa.string()),
    pa.field("supervoxel_id", pa.int64()), pa.field("target_class", pa.string())])

# tcav_scores/<class>/<layer>/: one row per (concept or the random baseline, random set).
TCAV = pa.schema(
    [
        pa.field("target_class", pa.string()), pa.field("layer", pa.string()),
        pa.field("concept", pa.string()),  # "random" for the random-vs-random baseline
        pa.field("random_set", pa.int32()), pa.field("cav_accuracy", pa.float64()),  # held out
        pa.field("tcav_score", pa.float64()), pa.field("tcav_magnitude", pa.float64()),
        # the CAV: the unit normal of the concept-vs-random-set classifier, toward the concept,
        # in the layer's pooled channel space (Run.cavs; TCAV is the share of the scoring
        # videos' class-logit gradients with a positive dot product with it)
        pa.field("direction", pa.list_(pa.float32())),
        pa.field("trainer", pa.string()),  # the concepts.cav_model that fitted it
    ]
)

# voxel_importance/: one row per (scored video, layer). Encoding "supervoxel_scores": the map is
# the per-voxel mean of the scores of the kept supervoxels covering it (label volumes in
# label_volumes/), so the row holds exactly the per-supervoxel scores it comes from. Read it
# with pipeline.io.load_voxel_importance.
VOXEL_IMPORTANCE = pa.schema(
    [
        pa.field("video_id", pa.string()), pa.field("target_class", pa.string()), pa.field("layer", pa.string()),
        pa.field("shape", pa.list_(pa.int32(), 3)),  # L, H, W of the clip
        pa.field("encoding", pa.string()),
        pa.field("supervoxel_ids", pa.list_(pa.int64())),
        pa.field("concepts", pa.list_(pa.string())),  # the concept each was assigned to (null: none)
        pa.field("scores", pa.list_(pa.float32())),  # that concept's mean TCAV score (0: none)
    ]
)


# evaluation/<class>/: one row per curve point of the deletion/insertion experiments, plus one
# area-under-the-curve row per curve (kind "auc", k null, accuracy and mean_prob holding the
# areas over k scaled to [0, 1]). ranking: the concept order the curves follow (tcav, the
# paper's, or causal); order: top (most important first), bottom, random (mean of the draws).
EVALUATION = pa.schema(
    [
        pa.field("target_class", pa.string()), pa.field("layer", pa.string()), pa.field("ranking", pa.string()),
        pa.field("mode", pa.string()), pa.field("order", pa.string()), pa.field("kind", pa.string()),
        pa.field("k", pa.int32()), pa.field("accuracy", pa.float64()), pa.field("mean_prob", pa.float64()),
        pa.field("n_videos", pa.int32()),
    ]
)


# The atlas stage (pipeline.stages.atlas): per explained layer, global concepts found by FAISS
# k-means over every kept supervoxel vector of every class.
_EXEMPLARS = [pa.field("exemplar_video_ids", pa.list_(pa.string())),  # the members nearest the centroid
              pa.field("exemplar_supervoxel_ids", pa.list_(pa.int64())),
              pa.field("exemplar_distances", pa.list_(pa.float32()))]

# atlas/assignments/<layer>/<class>/: one row per supervoxel vector, in the order of its class's
# activations; atlas_id (partition ordinal << 32 | row) is its id in the layer's search index.
ATLAS_ASSIGNMENTS = pa.schema(
    [
        pa.field("video_id", pa.string()), pa.field("supervoxel_id", pa.int64()), pa.field("layer", pa.string()),
        pa.field("target_class", pa.string()), pa.field("global_concept", pa.int32()),
        pa.field("distance", pa.float32()),  # L2 distance to the global concept's centroid
        pa.field("atlas_id", pa.int64()),
    ]
)

# A scored run's: each video's sensitivity to its predicted class's concepts, per concept (and
# "random", the baseline): over the run's saved CAVs, the share with gradient . CAV > 0 and the mean.
CONCEPT_SENSITIVITY = pa.schema([
    pa.field("video_id", pa.string()), pa.field("target_class", pa.string()),
    pa.field("layer", pa.string()), pa.field("concept", pa.string()),
    pa.field("share_positive", pa.float64()), pa.field("derivative_mean", pa.float64()),
    pa.field("cavs", pa.int32())])

# A scored run's (pipeline.score): the concepts of the explaining run present in each video.
CONCEPT_PRESENCE = pa.schema([
    pa.field("video_id", pa.string()), pa.field("target_class", pa.string()), pa.field("layer", pa.string()),
    pa.field("concept", pa.string()),
    pa.field("supervoxel_ids", pa.list_(pa.int64())),  # the video's supervoxels assigned to it
    pa.field("voxels", pa.int64()), pa.field("share", pa.float64()),  # voxels they cover, share of the clip
    pa.field("t0", pa.int32()), pa.field("t1", pa.int32()),  # the frames they span (half-open)
    pa.field("tcav_mean", pa.float64()), pa.field("causal_importance", pa.float64())])

# atlas/concepts.parquet: one row per global concept of a layer.
ATLAS_CONCEPTS = pa.schema(
    [
        pa.field("layer", pa.string()), pa.field("global_concept", pa.int32()),
        pa.field("size", pa.int64()),  # supervoxel vectors assigned to it
        pa.field("num_videos", pa.int64()),  # distinct videos among them
        pa.field("num_classes", pa.int32()),
        pa.field("classes", pa.list_(pa.string())),  # the classes it occurs in, largest share first
        pa.field("class_shares", pa.list_(pa.float64())),  # each class's share of its members
        pa.field("class_entropy", pa.float64()),  # of those shares, in bits: 0 = one class only
        pa.field("top_class", pa.string()), pa.field("top_class_share", pa.float64()),  # its purity
        pa.field("centroid", pa.list_(pa.float32())),
    ]
)

# atlas/class_concepts.parquet: the class x global-concept matrix (its non-zero cells).
ATLAS_CLASS_CONCEPTS = pa.schema(
    [
        pa.field("target_class", pa.string()), pa.field("layer", pa.string()), pa.field("global_concept", pa.int32()),
        pa.field("members", pa.int64()), pa.field("videos", pa.int64()),
        pa.field("share_of_class", pa.float64()),  # of the class's vectors at that layer
        pa.field("share_of_concept", pa.float64()),  # of the global concept's members
        *_EXEMPLARS,
    ]
)

# atlas/_counts/<layer>/<class>/: one partition's cells of that matrix (what the summary adds up).
ATLAS_COUNTS = pa.schema([
    pa.field("layer", pa.string()), pa.field("target_class", pa.string()), pa.field("global_concept", pa.int32()),
    pa.field("members", pa.int64()), pa.field("videos", pa.int64()), *_EXEMPLARS])

# atlas/concept_links/<layer>/<class>/: per concept of concepts.parquet, the global concepts its
# members fall into.
ATLAS_LINKS = pa.schema([
    pa.field("target_class", pa.string()), pa.field("layer", pa.string()), pa.field("concept", pa.string()),
    pa.field("global_concept", pa.int32()), pa.field("members", pa.int64()), pa.field("share", pa.float64())])

# atlas/_train/<layer>/: the layer's trained, empty search index (FAISS's own serialisation),
# whose coarse quantizer holds the global concepts' centroids.
ATLAS_TRAINED = pa.schema([pa.field("layer", pa.string()), pa.field("index", pa.large_binary())])


# randomised_gradients/<class>/ (the concepts stage's randomisation check, concepts.randomisation_check):
# each scoring video's class-logit gradient at a layer from the model with every weight after
# that layer re-initialised.
RANDOMISED_GRADIENTS = pa.schema([pa.field("video_id", pa.string()), pa.field("layer", pa.string()),
                                  pa.field("gradient", pa.list_(pa.float32()))])

# metrics/<stage>.parquet (the concepts and evaluate stages'): what the stage found per class and
# layer, one row per figure; layer null: the class as a whole. A nested figure's name joins its
# keys with "." (ground_truth.actor_fraction) and a list's items with their index (..._ci95.0);
# numbers (booleans as 0/1) in `value`, words in `text`. The report reads these, not run.json.
METRICS = pa.schema(
    [
        pa.field("target_class", pa.string()), pa.field("layer", pa.string()),
        pa.field("metric", pa.string()), pa.field("value", pa.float64()), pa.field("text", pa.string()),
    ]
)


def metric_rows(target_class: str, layer: str | None, figures: dict[str, Any], prefix: str = "") -> list[dict]:
    """A stage's figures of one class (and layer) as rows of METRICS."""
    rows: list[dict[str, Any]] = []
    for name, v in figures.items():
        metric = f"{prefix}{name}"
        if isinstance(v, dict):
            rows += metric_rows(target_class, layer, v, f"{metric}.")
        elif isinstance(v, (list, tuple)):
            rows += metric_rows(target_class, layer, {str(i): x for i, x in enumerate(v)}, f"{metric}.")
        else:
            number = v is not None and not isinstance(v, str)
            rows.append({"target_class": target_class, "layer": layer, "metric": metric,
                         "value": float(v) if number else None, "text": v if isinstance(v, str) else None})
    return rows


def metric_figures(table: pa.Table) -> dict[str, dict[str | None, dict[str, Any]]]:
    """METRICS rows back as {class: {layer (None: the class): {metric: number, word or None}}}."""
    out: dict[str, dict[str | None, dict[str, Any]]] = {}
    for k, layer, metric, value, text in zip(*(table.column(c).to_pylist() for c in METRICS.names)):
        out.setdefault(k, {}).setdefault(layer, {})[metric] = text if text is not None else value
    return out


# comparison.parquet (`ace3d compare`, pipeline.compare): two runs' concepts matched one-to-one
# per class by their members' Jaccard index; a row per matched pair, and one per concept left
# unmatched (the other side's columns null).
COMPARISON = pa.schema(
    [
        pa.field("target_class", pa.string()),
        pa.field("jaccard", pa.float64()),  # of the two member sets; null: unmatched
        pa.field("status", pa.string()),  # shared | a only | b only | neither (significance)
        *(pa.field(f"{name}_{side}", kind) for side in ("a", "b") for name, kind in (
            ("concept", pa.string()), ("layer", pa.string()), ("tcav", pa.float64()),
            ("significant", pa.bool_()), ("causal", pa.float64()))),
    ]
)


# _done/<stage>/: the markers of a stage's finished units of work, written last by whoever did
# the unit (see pipeline.run_folder). One row per video of a per-video unit (its status, and
# where its rows are: `part` and `row_group` of the unit's parts), or one row per unit of a
# reduction (its small result in `record`, JSON).
MARKERS = pa.schema(
    [
        pa.field("unit", pa.string(), nullable=False),
        pa.field("part", pa.string(), nullable=False),  # the unit's part file name in every dataset it wrote
        pa.field("video_id", pa.string()),
        pa.field("status", pa.string()),  # ok | failed
        pa.field("error", pa.string()),
        pa.field("row_group", pa.int32()),  # the video's row group in the unit's parts
        pa.field("record", pa.string()),  # JSON: the unit's small result
        pa.field("settings", pa.string()),  # the stage's fingerprint
        pa.field("identity", pa.string()),  # the video's identity (videos.parquet) when the unit did it
        pa.field("retryable", pa.bool_()),  # failed: whether a rerun tries it again
        pa.field("outputs", pa.list_(pa.string())),  # the folders the unit wrote its part into
    ]
)


def vector_matrix(table: pa.Table, column: str = "vector") -> np.ndarray:
    """A list<float32> column of equal-length vectors (activations/, clip_activations/) as one
    float32 [rows, dim] array, without a copy per row."""
    col = table.column(column).combine_chunks()
    return col.values.to_numpy().reshape(table.num_rows, -1).astype(np.float32, copy=False)
