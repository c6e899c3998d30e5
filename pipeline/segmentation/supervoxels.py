"""Supervoxels of a clip (method step 2): 3D SLIC at several resolutions, small candidates
dropped, duplicates across resolutions removed by voxel IoU, short ones marked.

The overlap of every candidate with every kept supervoxel comes from one contingency table
per pair of resolutions (one `bincount` over the two label volumes), not from comparing masks
one by one: the reference's quadratic float-mask loop gives the same decisions (see
`tests/test_segmentation.py`, which keeps that loop as the oracle).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
from skimage.segmentation import slic

from pipeline.params import require
from pipeline.segmentation.aligned import AlignedVolume, aligned_jaccard, stce_candidates

# Status of a candidate supervoxel in the table.
KEPT = "kept"
DROPPED_SMALL = "dropped_small"  # below the minimum volume fraction
DROPPED_DUPLICATE = "dropped_duplicate"  # IoU above the threshold with a kept supervoxel
DROPPED_SHORT = "dropped_short"  # shorter than the model window


@dataclass
class Segmentation:
    """The supervoxels of one clip.

    labels: uint16 [R, L, H, W], one label volume per resolution (labels start at 0).
    table: one entry per candidate (every label of every resolution), as arrays:
      supervoxel_id (int32, unique in the clip, = resolution * 65536 + label ... see
      `supervoxel_id`), resolution (index into `n_segments`), label, t0, t1, y0, y1, x0, x1
      (half-open bounding box), volume (voxels), status, reason.
    """

    labels: np.ndarray
    n_segments: tuple[int, ...]
    table: dict[str, np.ndarray]

    def kept(self) -> np.ndarray:
        """Indices into the table of the supervoxels kept for explanation."""
        return np.flatnonzero(self.table["status"] == KEPT)

    def mask(self, supervoxel_id: int) -> np.ndarray:
        """bool [L, H, W] of one supervoxel."""
        return supervoxel_mask(self.labels, supervoxel_id)


LABEL_BITS = 16
DEDUPE_RULES = ("voxel", "stce")


def supervoxel_id(resolution: np.ndarray | int, label: np.ndarray | int) -> np.ndarray | int:
    """The id of a supervoxel: resolution index in the high bits, its label in the low 16."""
    return (np.asarray(resolution, dtype=np.int64) << LABEL_BITS) | np.asarray(label, dtype=np.int64)


def split_supervoxel_id(sid: int) -> tuple[int, int]:
    return int(sid) >> LABEL_BITS, int(sid) & ((1 << LABEL_BITS) - 1)


def supervoxel_mask(labels: np.ndarray, sid: int) -> np.ndarray:
    """bool [L, H, W] of one supervoxel, from a video's label volumes [R, L, H, W]."""
    resolution, label = split_supervoxel_id(sid)
    return labels[resolution] == label


def slic_labels(clip: np.ndarray, n_segments: int, compactness: float, sigma: float,
                spacing: Sequence[float], max_num_iter: int) -> np.ndarray:
    """3D SLIC of a clip [L, H, W, 3] uint8 -> uint16 labels [L, H, W] numbered 0..n-1."""
    labels = slic(clip, n_segments=n_segments, compactness=compactness, sigma=sigma,
                  spacing=np.asarray(spacing, dtype=np.float64), max_num_iter=max_num_iter,
                  start_label=0, channel_axis=-1)
    counts = np.bincount(labels.ravel())
    if not counts.all():  # gaps in the numbering: compact it so the bincounts stay small
        remap = np.cumsum(counts > 0) - 1
        labels = remap[labels]
        counts = counts[counts > 0]
    if len(counts) > 1 << LABEL_BITS:
        raise ValueError(f"n_segments={n_segments} gave {len(counts)} labels; at most {1 << LABEL_BITS} are supported")
    return labels.astype(np.uint16)


def label_boxes(labels: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Volume and half-open bounding box (t0,t1,y0,y1,x0,x1) of every label 0..n-1."""
    out: dict[str, np.ndarray] = {"volume": np.bincount(labels.ravel(), minlength=n).astype(np.int64)}
    flat = labels.astype(np.int64)
    for axis, (lo, hi) in enumerate((("t0", "t1"), ("y0", "y1"), ("x0", "x1"))):
        size = labels.shape[axis]
        shape = [1, 1, 1]
        shape[axis] = size
        position = np.arange(size, dtype=np.int64).reshape(shape)
        # present[label, i]: the label has a voxel at position i along this axis.
        present = np.bincount((flat * size + position).ravel(), minlength=n * size).reshape(n, size) > 0
        any_ = present.any(1)
        out[lo] = np.where(any_, present.argmax(1), 0).astype(np.int32)
        out[hi] = np.where(any_, size - present[:, ::-1].argmax(1), 0).astype(np.int32)
    return out


def dedupe(labels: np.ndarray, counts: Sequence[int], candidate: Sequence[np.ndarray], iou_threshold: float,
           rule: str = "voxel", boxes: Optional[Sequence[dict[str, np.ndarray]]] = None
           ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Keep candidates in order (resolution by resolution, label by label), dropping one whose
    overlap with a supervoxel kept at an earlier resolution exceeds `iou_threshold`.

    rule: `voxel`, the voxel IoU over the clip (from one contingency table per pair of
    resolutions); `stce`, the authors' aligned Jaccard of temporally cropped masks (see
    `pipeline.segmentation.aligned`; needs `boxes`). labels: [R, L, H, W]; counts[r]: number of
    labels at resolution r; candidate[r]: bool per label (those above the minimum volume).
    Returns per resolution: kept (bool per label), the best overlap with a kept supervoxel, and
    the supervoxel id it was with (-1 if none). Labels of one resolution are disjoint, so only
    earlier resolutions can hold duplicates (the authors' rule compares only with those too).
    """
    r_count = len(counts)
    if rule == "stce":
        volumes = [AlignedVolume(labels[r], boxes[r]) for r in range(r_count)]

        def overlap(r: int, q: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
            return aligned_jaccard(volumes[r], volumes[q], rows, cols)
    else:
        sizes = [np.bincount(labels[r].ravel(), minlength=counts[r]) for r in range(r_count)]
        flat = [labels[r].ravel().astype(np.int64) for r in range(r_count)]

        def overlap(r: int, q: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
            # Contingency table: inter[a, b] = |label a at r  and  label b at q|.
            inter = np.bincount(flat[r] * counts[q] + flat[q], minlength=counts[r] * counts[q])
            inter = inter.reshape(counts[r], counts[q])[np.ix_(rows, cols)].astype(np.float64)
            union = sizes[r][rows, None] + sizes[q][None, cols] - inter
            return np.where(union > 0, inter / np.maximum(union, 1), 0.0)

    kept: list[np.ndarray] = []
    best_iou: list[np.ndarray] = []
    best_with: list[np.ndarray] = []
    for r in range(r_count):
        iou_max = np.zeros(counts[r])
        iou_arg = np.full(counts[r], -1, dtype=np.int64)
        rows = np.arange(counts[r])
        for q in range(r):
            cols = np.flatnonzero(kept[q])
            if not len(rows) or not len(cols):
                continue
            iou = overlap(r, q, rows, cols)
            arg = iou.argmax(1)
            val = iou[np.arange(len(rows)), arg]
            better = val > iou_max[rows]
            iou_max[rows[better]] = val[better]
            iou_arg[rows[better]] = supervoxel_id(q, cols[arg[better]])
        kept.append(np.asarray(candidate[r], dtype=bool) & ~(iou_max > iou_threshold))
        best_iou.append(iou_max)
        best_with.append(iou_arg)
    return kept, best_iou, best_with


@dataclass
class SegmentParams:
    """Supervoxels of a clip (method step 2; the science fields of the config group `segment`).

    n_segments: SLIC's approximate number of supervoxels per resolution, coarsest first. The
        order is the dedupe order: a supervoxel of an earlier resolution wins. The reference
        uses [15, 50, 80].
    compactness: SLIC's balance of colour against distance (higher: more regular shapes).
    sigma: Gaussian smoothing (voxels) before SLIC.
    spacing: voxel spacing (t, y, x) SLIC uses for distances: a larger t makes supervoxels
        shorter in time.
    min_volume_fraction: candidates smaller than this fraction of the clip volume are dropped
        (with dedupe=stce: not above this fraction of the volume of the frames they span).
    iou_threshold: a candidate whose voxel IoU with a kept supervoxel exceeds this is a duplicate
        (with dedupe=stce: the Jaccard index of the two masks aligned in time).
    max_num_iter: SLIC's iterations.
    dedupe: `voxel` (this project's rule: small and duplicate by voxels of the whole clip) or
        `stce` (the rule of the authors' code, for reproducing it; `pipeline.segmentation.aligned`).
    """

    n_segments: list[int] = field(default_factory=lambda: [15, 50, 80])
    compactness: float = 20.0
    sigma: float = 1.0
    spacing: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    min_volume_fraction: float = 0.001
    iou_threshold: float = 0.5
    max_num_iter: int = 10
    dedupe: str = "voxel"

    def check(self) -> None:
        """Raise ParameterError naming the first field out of range."""
        n = list(self.n_segments)
        require(bool(n) and min(n) >= 1, "n_segments", n, "must be a non-empty list of positive integers")
        require(self.compactness > 0, "compactness", self.compactness, "must be > 0")
        require(self.sigma >= 0, "sigma", self.sigma, "must be >= 0")
        spacing = list(self.spacing)
        require(len(spacing) == 3 and min(spacing) > 0, "spacing", spacing, "must be 3 positive numbers (t, y, x)")
        require(0 <= self.min_volume_fraction < 1, "min_volume_fraction", self.min_volume_fraction,
                "must be in [0, 1)")
        require(0 <= self.iou_threshold <= 1, "iou_threshold", self.iou_threshold, "must be in [0, 1]")
        require(self.max_num_iter >= 1, "max_num_iter", self.max_num_iter, "must be >= 1")
        require(self.dedupe in DEDUPE_RULES, "dedupe", self.dedupe, f"must be one of {', '.join(DEDUPE_RULES)}")


def segment_clip(clip: np.ndarray, params: Optional[SegmentParams] = None,
                 min_frames: Optional[int] = None) -> Segmentation:
    """Supervoxels of a clip at several resolutions.

    Parameters
    ----------
    clip : uint8 [L, H, W, 3]
        The clip, RGB, 0-255.
    params : SegmentParams, default SegmentParams()
        The resolutions, SLIC's settings and the dedupe rules (see there).
    min_frames : int or None
        Supervoxels spanning fewer frames than this (the model window) are marked
        `dropped_short`; they still count for dedupe, as in the reference, where the temporal
        rule is applied at the patch step.

    Returns
    -------
    Segmentation
    """
    params = params or SegmentParams()
    params.check()
    n_segments, spacing = [int(n) for n in params.n_segments], [float(v) for v in params.spacing]
    compactness, sigma, max_num_iter = params.compactness, params.sigma, params.max_num_iter
    min_volume_fraction, iou_threshold = params.min_volume_fraction, params.iou_threshold
    clip = np.asarray(clip)
    if clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"clip must be [L, H, W, 3], got shape {clip.shape}")
    if clip.dtype != np.uint8:
        raise ValueError(f"clip must be uint8 (0-255), got {clip.dtype}")

    labels = np.stack([slic_labels(clip, n, compactness, sigma, spacing, max_num_iter) for n in n_segments])
    counts = [int(labels[r].max()) + 1 for r in range(len(n_segments))]
    total = float(np.prod(clip.shape[:3]))
    boxes = [label_boxes(labels[r], counts[r]) for r in range(len(n_segments))]
    if params.dedupe == "stce":
        candidate = stce_candidates(boxes, clip.shape[1] * clip.shape[2], min_volume_fraction)
        small_reason, overlap_name = "not above {:g} of the frames it spans", "aligned Jaccard"
    else:
        candidate = [b["volume"] >= min_volume_fraction * total for b in boxes]
        small_reason, overlap_name = "< {:g} of the clip", "IoU"
    kept, best_iou, best_with = dedupe(labels, counts, candidate, iou_threshold, params.dedupe, boxes)

    columns: dict[str, list[np.ndarray]] = {k: [] for k in (
        "supervoxel_id", "resolution", "label", "t0", "t1", "y0", "y1", "x0", "x1", "volume", "status",
        "reason", "max_iou")}
    for r, b in enumerate(boxes):
        n = counts[r]
        lab = np.arange(n)
        status = np.full(n, KEPT, dtype=object)
        reason = np.full(n, "", dtype=object)
        small = ~candidate[r]
        dup = candidate[r] & ~kept[r]
        status[small] = DROPPED_SMALL
        reason[small] = [f"volume {v} " + small_reason.format(min_volume_fraction) for v in b["volume"][small]]
        status[dup] = DROPPED_DUPLICATE
        reason[dup] = [f"{overlap_name} {i:.3f} > {iou_threshold:g} with supervoxel {w}"
                       for i, w in zip(best_iou[r][dup], best_with[r][dup])]
        if min_frames:
            short = kept[r] & ((b["t1"] - b["t0"]) < min_frames)
            status[short] = DROPPED_SHORT
            reason[short] = [f"spans {t} frames < model window {min_frames}" for t in (b["t1"] - b["t0"])[short]]
        columns["supervoxel_id"].append(np.asarray(supervoxel_id(r, lab)))
        columns["resolution"].append(np.full(n, r, dtype=np.int32))
        columns["label"].append(lab.astype(np.int32))
        for key in ("t0", "t1", "y0", "y1", "x0", "x1"):
            columns[key].append(b[key])
        columns["volume"].append(b["volume"])
        columns["status"].append(status)
        columns["reason"].append(reason)
        columns["max_iou"].append(best_iou[r].astype(np.float32))
    table = {k: np.concatenate(v) for k, v in columns.items()}
    return Segmentation(labels=labels, n_segments=tuple(int(n) for n in n_segments), table=table)


def stack_label_volumes(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Rows of `label_volumes/` -> uint16 [R, L, H, W] per video, resolutions in order."""
    by_video: dict[str, list[tuple[int, np.ndarray]]] = {}
    for r in rows:
        vol = np.frombuffer(r["labels"], dtype=np.uint16).reshape(r["shape"])
        by_video.setdefault(r["video_id"], []).append((r["resolution"], vol))
    return {vid: np.stack([v for _, v in sorted(vols, key=lambda x: x[0])]) for vid, vols in by_video.items()}
