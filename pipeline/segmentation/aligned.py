"""The authors' own dedupe rule (their code, STCE), for reproducing it: `segment.dedupe=stce`.

Read from that code, it differs from the voxel-IoU rule of `supervoxels.dedupe` in four ways:
- a candidate's mask is cropped to its own frames [t0, t1);
- it is small when `volume / ((t1 - t0) * H * W)` is not above the minimum fraction (a share of
  the frames it spans, not of the whole clip);
- it is compared only with the supervoxels kept at earlier resolutions: the two cropped masks are
  aligned at their centres (the longer one cut to the shorter one's length, from its frame
  `floor((L_long - L_short) / 2)`), and a Jaccard index of the aligned volumes above the
  threshold makes it a duplicate;
- resolutions in order, labels in increasing order.

The aligned overlap of candidate `a` and kept supervoxel `b` is the overlap of `a` at frame `i`
with `b` at frame `i + d(a, b)` for one shift per pair, summed over frames. It comes from the
temporal runs of the two label volumes, pixel by pixel: at one pixel, a run of `a` over frames
[s, e) and a run of `b` over [s', e') overlap at shift d for `min(e, e' - d) - max(s, s' - d)`
frames. Supervoxels are coherent in time, so a pixel has a few runs and the cost is a few pairs
per pixel instead of one mask comparison per pair of supervoxels (`tests/reference` keeps the
mask-by-mask transcription as the oracle; `bench/segment.py` times both).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def stce_candidates(boxes: Sequence[dict[str, np.ndarray]], frame_pixels: int,
                    min_volume_fraction: float) -> list[np.ndarray]:
    """Per resolution, bool per label: its volume over the frames it spans is above the fraction."""
    out = []
    for b in boxes:
        span = (b["t1"] - b["t0"]).astype(np.float64) * frame_pixels
        out.append(np.divide(b["volume"], span, out=np.zeros(len(span)), where=span > 0) > min_volume_fraction)
    return out


def _runs(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The temporal runs of a label volume [L, H, W], pixel by pixel.

    Returns per run its label, first frame, end frame (exclusive), and per pixel the index of
    its first run and its number of runs (runs are ordered by pixel, then time)."""
    length = volume.shape[0]
    series = volume.reshape(length, -1).T  # [P, L]
    starts = np.ones(series.shape, dtype=bool)
    starts[:, 1:] = series[:, 1:] != series[:, :-1]
    pixel, frame = np.nonzero(starts)
    label = series[pixel, frame].astype(np.int64)
    end = np.empty_like(frame)
    end[:-1] = frame[1:]
    last = np.ones(len(frame), dtype=bool)
    last[:-1] = pixel[1:] != pixel[:-1]
    end[last] = length
    per_pixel = starts.sum(1)
    first = np.cumsum(per_pixel) - per_pixel
    return label, frame.astype(np.int64), end.astype(np.int64), first, per_pixel


def _frame_volumes(volume: np.ndarray, n: int) -> np.ndarray:
    """cum[label, t]: voxels of the label in frames [0, t) (int64 [n, L + 1])."""
    length = volume.shape[0]
    flat = volume.reshape(length, -1).astype(np.int64) + n * np.arange(length)[:, None]
    per_frame = np.bincount(flat.ravel(), minlength=n * length).reshape(length, n).T
    cum = np.zeros((n, length + 1), dtype=np.int64)
    np.cumsum(per_frame, axis=1, out=cum[:, 1:])
    return cum


class AlignedVolume:
    """What the aligned Jaccard needs of one label volume [L, H, W] with labels 0..n-1."""

    def __init__(self, volume: np.ndarray, boxes: dict[str, np.ndarray]):
        self.t0 = boxes["t0"].astype(np.int64)
        self.length = (boxes["t1"] - boxes["t0"]).astype(np.int64)
        self.cum = _frame_volumes(volume, len(self.t0))
        self.runs = _runs(volume)


def aligned_jaccard(va: AlignedVolume, vb: AlignedVolume, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Jaccard index [len(rows), len(cols)] of the labels `rows` of volume a with the labels
    `cols` of volume b, their temporally cropped masks aligned at their centres."""
    t0a, t0b, la, lb, cum_a, cum_b = va.t0, vb.t0, va.length, vb.length, va.cum, vb.cum
    na, nb = len(t0a), len(t0b)
    # Per pair: the frames of each that are compared, and the shift from a's frames to b's.
    a_longer = la[:, None] > lb[None, :]
    off = np.abs(la[:, None] - lb[None, :]) // 2
    start_a = t0a[:, None] + np.where(a_longer, off, 0)
    start_b = t0b[None, :] + np.where(a_longer, 0, off)
    common = np.minimum(la[:, None], lb[None, :])
    shift = start_b - start_a
    vol_a = np.take_along_axis(cum_a, start_a + common, 1) - np.take_along_axis(cum_a, start_a, 1)
    cum_b_t = cum_b.T  # [L + 1, nb]
    vol_b = (np.take_along_axis(cum_b_t, (start_b + common), 0) - np.take_along_axis(cum_b_t, start_b, 0))

    # Overlaps from the pairs of runs at each pixel (only the rows and columns asked for).
    lab_a, s_a, e_a, first_a, count_a = va.runs
    lab_b, s_b, e_b, first_b, count_b = vb.runs
    want_a, want_b = np.zeros(na, dtype=bool), np.zeros(nb, dtype=bool)
    want_a[rows], want_b[cols] = True, True
    pairs = count_a * count_b
    pixel = np.repeat(np.arange(len(pairs)), pairs)
    local = np.arange(int(pairs.sum())) - np.repeat(np.cumsum(pairs) - pairs, pairs)
    ia = first_a[pixel] + local // count_b[pixel]
    ib = first_b[pixel] + local % count_b[pixel]
    a, b = lab_a[ia], lab_b[ib]
    keep = want_a[a] & want_b[b]
    ia, ib, a, b = ia[keep], ib[keep], a[keep], b[keep]
    d = shift[a, b]
    overlap = np.minimum(e_a[ia], e_b[ib] - d) - np.maximum(s_a[ia], s_b[ib] - d)
    inter = np.bincount(a * nb + b, weights=np.maximum(overlap, 0), minlength=na * nb).reshape(na, nb)
    inter = inter[np.ix_(rows, cols)]
    union = (vol_a + vol_b)[np.ix_(rows, cols)] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)
