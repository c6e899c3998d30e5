"""Supervoxel patches built where the model runs (method step 3), in torch, in batches.

A patch of a supervoxel with temporal extent [t0, t1) and spatial box B keeps the clip's pixels
inside the supervoxel, fills the rest with the mean pixel, crops every frame to B and resizes it
back to the model's H x W (bicubic, as the reference does with PIL), then is cut into T-frame
windows.

The cheap exact formulation: a resize is linear, so it is two small matrix products with the
crop, `Ry @ X @ Rx^T`, where `Ry` (H x h) and `Rx` (W x w) hold PIL's interpolation weights for
that crop size; and because every row of `Ry`, `Rx` sums to one, the fill commutes with the
resize: `resize(M*F + (1-M)*mu) = mu + resize(M*(F - mu))`. So only the crop (h x w, usually
far smaller than the frame) is touched, never a full-frame mask per supervoxel, and nothing
but the clip and its label volumes has to reach the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

import numpy as np
import torch

from pipeline.activations.params import RESAMPLING, ActivateParams

if TYPE_CHECKING:
    from pipeline.models.registry import LoadedModel


def _bicubic(x: np.ndarray) -> np.ndarray:
    """PIL's bicubic kernel (a = -0.5)."""
    a = -0.5
    x = np.abs(x)
    return np.where(x < 1, ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
                    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1, 1.0 - x, 0.0)


@lru_cache(maxsize=4096)
def resample_matrix(in_size: int, out_size: int, mode: str = "bicubic") -> np.ndarray:
    """float32 [out_size, in_size]: row i holds the weights PIL's `Image.resize` gives the input
    pixels for output pixel i (support widened when downsampling, as PIL's antialiasing does)."""
    if mode not in RESAMPLING:
        raise ValueError(f"resampling must be one of {RESAMPLING}, got {mode!r}")
    kernel, support = (_bicubic, 2.0) if mode == "bicubic" else (_bilinear, 1.0)
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support *= filterscale
    out = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), in_size)
        xs = np.arange(lo, hi)
        w = kernel((xs - centre + 0.5) / filterscale)
        total = w.sum()
        out[i, lo:hi] = w / total if total != 0 else w
    return out.astype(np.float32)


@dataclass(frozen=True)
class PatchSpec:
    """What the model wants: window T, input H x W, normalisation (0-1 scale), the fill; and
    how its layers lay out their outputs (`pipeline.activations.extract.LAYOUTS`)."""

    window: int
    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    fill: float = ActivateParams.fill  # the mean pixel on the 0-255 scale, put where the supervoxel is not
    resampling: str = ActivateParams.resampling
    pad_short: bool = False  # a supervoxel shorter than the window gets the window centred on it
    layout: str = "channels_first"


def patch_spec(model: "LoadedModel", params: ActivateParams, pad_short: bool = False) -> PatchSpec:
    """What a model's patches look like: its window, input size and normalisation, the fill and
    kernel of `params`; `pad_short` (segment.short_supervoxels=pad): a supervoxel shorter than
    the window gets the window of the clip centred on it."""
    s = model.spec
    return PatchSpec(window=s.window, height=s.height, width=s.width, mean=tuple(s.mean), std=tuple(s.std),
                     fill=params.fill, resampling=params.resampling, pad_short=pad_short, layout=s.layout)


def num_windows(t0: int, t1: int, window: int) -> int:
    """Non-overlapping T-frame windows from t0; a remainder shorter than T is left out."""
    return max(0, (int(t1) - int(t0)) // window)


def window_starts(t0: int, t1: int, window: int, length: int, pad_short: bool = False) -> list[int]:
    """First frames of a patch's T-frame windows: non-overlapping from t0 (method step 3), or,
    for a patch shorter than T with `pad_short`, the one window of the clip (of `length`
    frames) centred on it, where the frames it does not reach are all fill."""
    n = num_windows(t0, t1, window)
    if n or not pad_short or length < window or t1 <= t0:
        return [int(t0) + i * window for i in range(n)]
    return [min(max((int(t0) + int(t1) - window) // 2, 0), length - window)]


def offset_clip(clip: torch.Tensor, spec: PatchSpec) -> torch.Tensor:
    """uint8 [L, H, W, 3] -> float [3, L, H, W] minus the fill: made once per clip, then every
    patch is a masked crop of it."""
    return clip.permute(3, 0, 1, 2).float().sub_(spec.fill)


def patch_frames(clip: torch.Tensor, labels: torch.Tensor, label: int, box: Sequence[int], spec: PatchSpec,
                 start: int, frames: int, out: Optional[torch.Tensor] = None, normalised: bool = True) -> torch.Tensor:
    """Frames `start .. start + frames` of one supervoxel's patch: [3, frames, H, W] in float32
    (or `out`'s dtype), normalised as the model expects (or on 0-255 with `normalised=False`).

    clip: the clip from `offset_clip` ([3, L, H0, W0], pixels minus the fill) on the device;
    labels: [L, H0, W0] label volume of the supervoxel's resolution; box: (t0, t1, y0, y1, x0,
    x1), the supervoxel's bounding box. `out`, if given, receives the result (a slot of a
    batch: no copy). A bfloat16 `out` (the batches of a bf16 model, `activate.autocast`) gets
    the vertical pass, the one over the full-size output, in bf16: everything before it stays
    in float32. Besides the bf16 rounding of the output (which autocast would give the model's
    input anyway), its weights and input are rounded to bf16: tests/test_patches.py measures the
    result against PIL within the float32 path's bounds.
    """
    _, _, y0, y1, x0, x1 = (int(v) for v in box)
    inside = labels[start:start + frames, y0:y1, x0:x1] == label  # [F, h, w]
    x = clip[:, start:start + frames, y0:y1, x0:x1] * inside  # [3, F, h, w], 0 outside = the fill
    h, w = y1 - y0, x1 - x0
    ry = _matrix(h, spec.height, spec.resampling, clip.device)
    rx = _matrix(w, spec.width, spec.resampling, clip.device)
    # PIL's order: the horizontal pass, rounded and clipped to 8 bits, then the vertical one.
    x = (x @ rx.T).clamp_(-spec.fill, 255.0 - spec.fill).round_()  # [3, F, h, W]
    if not normalised:
        full = torch.matmul(ry, x).add_(spec.fill).clamp_(0.0, 255.0).round_()
        return full if out is None else out.copy_(full)
    # Normalisation folded into the small intermediate: every row of `ry` sums to one, so the
    # per-channel scale and offset pass through the vertical product, which is then the only
    # pass over the full-size output. (PIL also clips the vertical pass's overshoot at hard
    # edges and rounds to 8 bits; the fast path does neither: see tests/test_patches.py.)
    scale, bias = _normalisation(spec, clip.device)
    if out is not None and out.dtype != x.dtype:  # scaled, offset and cast in one pass
        ry = _matrix(h, spec.height, spec.resampling, clip.device, out.dtype)
        x = torch.addcmul(bias, x, scale, out=torch.empty(x.shape, dtype=out.dtype, device=x.device))
    else:
        x = x.mul_(scale).add_(bias)
    return torch.matmul(ry, x, out=out)


_NORMALISATION: dict[tuple[PatchSpec, str], tuple[torch.Tensor, ...]] = {}


def _normalisation(spec: PatchSpec, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Per-channel [3, 1, 1, 1] scale and bias mapping fill-offset pixels to the model's input."""
    key = (spec, str(device))
    if key not in _NORMALISATION:
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(3, 1, 1, 1) * 255.0
        std = torch.tensor(spec.std, dtype=torch.float32).view(3, 1, 1, 1) * 255.0
        _NORMALISATION[key] = (1.0 / std).to(device), ((spec.fill - mean) / std).to(device)
    return _NORMALISATION[key]


_DEVICE_MATRICES: dict[tuple[int, int, str, str, torch.dtype], torch.Tensor] = {}


def _matrix(in_size: int, out_size: int, mode: str, device: torch.device,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    key = (in_size, out_size, mode, str(device), dtype)
    m = _DEVICE_MATRICES.get(key)
    if m is None:
        m = _DEVICE_MATRICES[key] = torch.from_numpy(resample_matrix(in_size, out_size, mode)).to(device, dtype)
    return m


def normalise_(batch: torch.Tensor, spec: PatchSpec) -> torch.Tensor:
    """In place: [N, 3, T, H, W] on 0-255 -> the model's normalised input."""
    mean = torch.tensor(spec.mean, device=batch.device, dtype=batch.dtype).view(1, 3, 1, 1, 1) * 255.0
    std = torch.tensor(spec.std, device=batch.device, dtype=batch.dtype).view(1, 3, 1, 1, 1) * 255.0
    return batch.sub_(mean).div_(std)


@dataclass(frozen=True)
class PatchRequest:
    """One patch to build: `owner` is returned with its windows (e.g. a table row index)."""

    owner: int
    resolution: int  # which label volume; -1: the whole clip (no mask, full frame)
    label: int
    box: tuple[int, int, int, int, int, int]  # t0, t1, y0, y1, x0, x1


def whole_clip_request(owner: int, shape: Sequence[int]) -> PatchRequest:
    length, height, width = (int(s) for s in shape[:3])
    return PatchRequest(owner, -1, 0, (0, length, 0, height, 0, width))


def iter_window_batches(clip: torch.Tensor, labels: torch.Tensor, requests: Sequence[PatchRequest],
                        spec: PatchSpec, batch_size: int, reuse: bool = False,
                        dtype: torch.dtype = torch.float32) -> Iterator[tuple[torch.Tensor, list[int]]]:
    """Batches of model-ready windows: (`dtype` [B, 3, T, H, W] normalised, owner of each window).

    Patches are built just before they are needed, so at most one batch (plus one patch) is in
    memory whatever the number of supervoxels. A whole-clip request (resolution -1) keeps every
    pixel: it is the clip resized to the model's input.

    With `reuse`, every batch is written into the same buffer, so a batch is valid only until
    the next one is asked for. That saves allocating (and, on a CPU, page-faulting in) a fresh
    batch each time (the README gives the measured share).
    `dtype` bfloat16 gives the batches a bf16 model takes (see `patch_frames`). Call it outside
    an autocast region: the patches choose their own precision.
    """
    t = spec.window
    offset: Optional[torch.Tensor] = None  # made on first need: a whole clip at the model's size needs none
    full: Optional[torch.Tensor] = None

    def new_batch() -> torch.Tensor:
        return torch.empty((batch_size, 3, t, spec.height, spec.width), dtype=dtype, device=clip.device)

    batch, owners = new_batch(), []
    for req in requests:
        for start in window_starts(req.box[0], req.box[1], t, int(clip.shape[0]), spec.pad_short):
            slot = batch[len(owners)]
            if req.resolution < 0 and not _needs_resize(clip, spec):
                slot.copy_(normalise_(clip[start:start + t].permute(3, 0, 1, 2).float().unsqueeze(0), spec)[0])
            else:
                if offset is None:
                    offset = offset_clip(clip, spec)
                if req.resolution < 0 and full is None:
                    full = torch.zeros(clip.shape[:3], dtype=torch.uint8, device=clip.device)  # label 0 everywhere
                volume = full if req.resolution < 0 else labels[req.resolution]
                label = 0 if req.resolution < 0 else req.label
                patch_frames(offset, volume, label, req.box, spec, start, t, out=slot)
            owners.append(req.owner)
            if len(owners) == batch_size:
                yield batch, owners
                batch, owners = (batch if reuse else new_batch()), []
    if owners:
        yield batch[:len(owners)], owners


def _needs_resize(clip: torch.Tensor, spec: PatchSpec) -> bool:
    return (int(clip.shape[1]), int(clip.shape[2])) != (spec.height, spec.width)
