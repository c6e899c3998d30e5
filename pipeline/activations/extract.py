"""Activations (method step 4): run windows through the model, capture named layers with
forward hooks in one pass, average each layer output over time and space, average a patch's
windows. Whole clips also give logits and, for a target class, the gradient of that class's
logit with respect to each layer (averaged over time and space, method step 7).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from pipeline.activations.patches import PatchRequest, PatchSpec, iter_window_batches, whole_clip_request


# How a layer lays out its output: [B, C, T, H, W] (3D ConvNets), [B, T, H, W, C] (Swin3D's
# stages), or a token sequence [B, N, C] (MViT blocks, which return it with its T x H x W grid).
LAYOUTS = ("channels_first", "channels_last", "tokens")


def pool(t: torch.Tensor, layout: str = "channels_first", grid: Optional[Sequence[int]] = None) -> torch.Tensor:
    """A layer's output -> [B, C]: the mean over time and space.

    channels_first [B, C, ...]: every axis after the channels; channels_last [B, ..., C]: every
    axis between batch and channels; tokens [B, N, C]: every token, leaving out a class token
    (the first) when the grid says there is one (N = 1 + T*H*W).
    """
    if layout == "tokens" or grid is not None:
        if t.dim() != 3:
            raise ValueError(f"a token layer's output must be [B, N, C], got shape {tuple(t.shape)}")
        if grid is not None and t.shape[1] == 1 + int(np.prod(grid)):
            t = t[:, 1:]
        return t.float().mean(dim=1)
    if t.dim() <= 2:
        return t.float()
    if layout == "channels_last":
        return t.float().mean(dim=tuple(range(1, t.dim() - 1)))
    return t.float().mean(dim=tuple(range(2, t.dim())))


def _grid(value: object) -> Optional[tuple[int, ...]]:
    """The token grid of an MViT block's output (T, H, W), or None."""
    if isinstance(value, (tuple, list)) and len(value) == 3 and all(isinstance(v, int) for v in value):
        return tuple(value)
    return None


class LayerTap:
    """Forward hooks on named modules; `outputs[name]` holds the last output tensor of each
    (the tokens of a block that returns (tokens, grid)), `grids[name]` its token grid or None."""

    def __init__(self, model: nn.Module, layers: Sequence[str], layout: str = "channels_first") -> None:
        modules = dict(model.named_modules())
        self.layers = list(layers)
        self.layout = layout
        self.outputs: dict[str, torch.Tensor] = {}
        self.grids: dict[str, Optional[tuple[int, ...]]] = {}
        self._handles = [modules[name].register_forward_hook(self._hook(name)) for name in self.layers]

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: object) -> None:
            if isinstance(output, (tuple, list)):
                self.outputs[name], self.grids[name] = output[0], _grid(output[1] if len(output) > 1 else None)
            else:
                self.outputs[name], self.grids[name] = output, None

        return hook

    def pooled(self, name: str, t: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[B, C] of the layer's output (or of `t`, a tensor shaped like it: its gradient)."""
        return pool(self.outputs[name] if t is None else t, self.layout, self.grids.get(name))

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "LayerTap":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class ClipResult:
    vectors: dict[str, np.ndarray]  # layer -> float32 [C]
    logits: np.ndarray  # float32 [K], averaged over windows
    gradients: dict[str, np.ndarray] = field(default_factory=dict)  # layer -> float32 [C]
    gradient_class: Optional[int] = None
    windows: int = 0


@dataclass
class SupervoxelResult:
    owners: list[int]  # the request owners, in output order
    vectors: dict[str, np.ndarray]  # layer -> float32 [len(owners), C]
    windows: np.ndarray  # int32 [len(owners)]


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on the device (a GPU, or a CPU: see `resolve_autocast`) when `enabled`."""
    if enabled:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _batch_dtype(enabled: bool) -> torch.dtype:
    """The patches of a bf16 model are built in bf16 (their last, full-size pass)."""
    return torch.bfloat16 if enabled else torch.float32


def resolve_autocast(setting: Optional[bool], device: torch.device) -> bool:
    """`ActivateParams.autocast`: True / False as given; None: bf16 where the device runs it
    natively, a GPU with bf16 units (not emulated), or a CPU with AVX512-BF16 or AMX."""
    if setting is not None:
        return bool(setting)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":  # not mkldnn's own check, which also accepts plain AVX512 (emulated bf16, slower)
        return bool(torch.backends.mkldnn.is_available()
                    and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()))
    return False


def supervoxel_vectors(model: nn.Module, clip: torch.Tensor, labels: torch.Tensor, requests: Sequence[PatchRequest],
                       spec: PatchSpec, layers: Sequence[str], batch_size: int,
                       autocast: bool = False) -> SupervoxelResult:
    """Pooled layer vectors of every requested patch (windows averaged), built and run in batches
    (bf16 with `autocast`, see `resolve_autocast`)."""
    position = {r.owner: i for i, r in enumerate(requests)}
    sums: dict[str, torch.Tensor] = {}
    counts = torch.zeros(len(requests), dtype=torch.int64)
    with LayerTap(model, layers, spec.layout) as tap, torch.inference_mode():
        for batch, owners in iter_window_batches(clip, labels, requests, spec, batch_size, reuse=True,
                                                 dtype=_batch_dtype(autocast)):
            with _autocast(clip.device, autocast):
                model(_memory_format(batch, model))
            index = torch.tensor([position[o] for o in owners])
            counts.index_add_(0, index, torch.ones(len(owners), dtype=torch.int64))
            index = index.to(clip.device)
            for name in layers:
                pooled = tap.pooled(name)
                if name not in sums:
                    sums[name] = torch.zeros((len(requests), pooled.shape[1]), dtype=torch.float32,
                                             device=pooled.device)
                sums[name].index_add_(0, index, pooled)
    have = torch.nonzero(counts).flatten()
    order = [requests[i].owner for i in have.tolist()]
    vectors = {name: (sums[name][have.to(sums[name].device)] / counts[have].to(sums[name].device)[:, None])
               .cpu().numpy().astype(np.float32) for name in sums}
    return SupervoxelResult(owners=order, vectors=vectors, windows=counts[have].numpy().astype(np.int32))


def clip_outputs(model: nn.Module, clip: torch.Tensor, spec: PatchSpec, layers: Sequence[str],
                 gradient_class: Optional[int], batch_size: int, autocast: bool = False) -> ClipResult:
    """Whole-clip vectors and logits (averaged over the clip's windows) and, when
    `gradient_class` is given, d logit[gradient_class] / d layer output, averaged over time and
    space and over windows."""
    request = [whole_clip_request(0, clip.shape)]
    vec_sum: dict[str, torch.Tensor] = {}
    grad_sum: dict[str, torch.Tensor] = {}
    logit_sum: Optional[torch.Tensor] = None
    windows = 0
    want_grad = gradient_class is not None
    grad_mode = torch.enable_grad() if want_grad else torch.inference_mode()
    with LayerTap(model, layers, spec.layout) as tap, grad_mode:
        for batch, owners in iter_window_batches(clip, clip.new_zeros(()), request, spec, batch_size,
                                                  reuse=not want_grad, dtype=_batch_dtype(autocast)):
            x = _memory_format(batch, model)
            if want_grad:
                x.requires_grad_(True)  # the weights may be frozen: the graph starts here
            with _autocast(clip.device, autocast):
                logits = model(x).float()
            outs = [tap.outputs[name] for name in layers]
            if want_grad:
                grads = torch.autograd.grad(logits[:, gradient_class].sum(), outs)
                for name, g in zip(layers, grads):
                    grad_sum[name] = grad_sum.get(name, 0) + tap.pooled(name, g).sum(0).detach()
            for name in layers:
                vec_sum[name] = vec_sum.get(name, 0) + tap.pooled(name).sum(0).detach()
            logit_sum = (logit_sum if logit_sum is not None else 0) + logits.sum(0).detach()
            windows += len(owners)
    if windows == 0:
        raise ValueError(f"the clip has {int(clip.shape[0])} frames, fewer than the model window {spec.window}")
    return ClipResult(
        vectors={n: (v / windows).cpu().numpy().astype(np.float32) for n, v in vec_sum.items()},
        logits=(logit_sum / windows).cpu().numpy().astype(np.float32),
        gradients={n: (g / windows).cpu().numpy().astype(np.float32) for n, g in grad_sum.items()},
        gradient_class=gradient_class, windows=windows)


def _memory_format(batch: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """The batch in the layout of the model's weights: channels_last_3d where `prepare_model`
    put them in it."""
    return batch.contiguous(memory_format=torch.channels_last_3d) if channels_last(model) else batch


def channels_last(model: nn.Module) -> bool:
    """Whether the model's first 5-D weight is stored channels_last_3d (and not also plain
    contiguous, as a 1x1x1 kernel is either way)."""
    for p in model.parameters():
        if p.dim() == 5:
            return p.is_contiguous(memory_format=torch.channels_last_3d) and not p.is_contiguous()
    return False


def choose_batch_size(model: nn.Module, spec: PatchSpec, layers: Sequence[str], device: torch.device,
                      autocast: bool = False, candidates: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128),
                      max_call_seconds: float = 2.0) -> tuple[int, dict[int, float]]:
    """The batch size with the least time per window on this device, measured on the real path
    (patches built on the device from a clip and a label volume, forward, hooks, pooling).

    The cost per window depends on the batch in ways no formula predicts (a larger batch
    amortises the per-call overhead, until the patches outgrow the caches). Candidates are tried in increasing
    order, stopping at the first that runs out of memory, takes over `max_call_seconds` per
    batch, or is slower per window than the best so far twice. Returns (best batch size,
    seconds per window of each candidate tried).
    """
    import time

    gen = torch.Generator().manual_seed(0)
    clip = torch.randint(0, 256, (spec.window, spec.height, spec.width, 3), dtype=torch.uint8, generator=gen)
    clip = clip.to(device)
    ys = torch.arange(spec.height, device=device) * 4 // spec.height
    xs = torch.arange(spec.width, device=device) * 4 // spec.width
    labels = (ys[:, None] * 4 + xs[None, :]).expand(1, spec.window, -1, -1).to(torch.int32)  # 16 regions
    box = {i: (0, spec.window, int((ys == i // 4).nonzero().min()), int((ys == i // 4).nonzero().max()) + 1,
               int((xs == i % 4).nonzero().min()), int((xs == i % 4).nonzero().max()) + 1) for i in range(16)}
    timings: dict[int, float] = {}
    worse = 0
    for b in candidates:
        n = max(2 * b, 24)  # enough windows for a stable timing
        requests = [PatchRequest(k, 0, k % 16, box[k % 16]) for k in range(n)]
        try:
            supervoxel_vectors(model, clip, labels, requests[:b], spec, layers, b, autocast)  # warm-up
            per_window = float("inf")
            for _ in range(2):  # best of two: timings on a busy machine are noisy
                _sync(device)
                t0 = time.perf_counter()
                supervoxel_vectors(model, clip, labels, requests, spec, layers, b, autocast)
                _sync(device)
                per_window = min(per_window, (time.perf_counter() - t0) / n)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
        if timings and per_window >= min(timings.values()):
            worse += 1
        timings[b] = per_window
        if worse >= 2 or per_window * b > max_call_seconds:
            break
    return min(timings, key=timings.__getitem__), timings


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clips_logits(model: nn.Module, clips: Sequence[torch.Tensor], spec: PatchSpec, batch_size: int,
                 autocast: bool = False) -> np.ndarray:
    """Logits of several whole clips (uint8 [L, H, W, 3] each, on the model's device), each
    averaged over its windows: float32 [len(clips), K]. The windows of all clips share batches."""
    if clips and all(tuple(c.shape[:3]) == (spec.window, spec.height, spec.width) for c in clips):
        # one window per clip at the model's size (the common case): no windowing, no resize
        from pipeline.activations.patches import normalise_

        x = normalise_(torch.stack(clips).permute(0, 4, 1, 2, 3).float(), spec)
        out = []
        with torch.inference_mode(), _autocast(x.device, autocast):
            for start in range(0, len(x), batch_size):
                out.append(model(_memory_format(x[start:start + batch_size], model)).float())
        return torch.cat(out).cpu().numpy().astype(np.float32)
    windows: list[torch.Tensor] = []
    owners: list[int] = []
    for i, clip in enumerate(clips):
        for batch, own in iter_window_batches(clip, clip.new_zeros(()), [whole_clip_request(i, clip.shape)], spec,
                                              max(1, batch_size)):
            windows.append(batch)  # each yielded batch is a fresh tensor
            owners.extend(own)
    if not windows:
        raise ValueError(f"the clips are shorter than the model window {spec.window}")
    x = torch.cat(windows)
    sums: Optional[torch.Tensor] = None
    index = torch.tensor(owners, device=x.device)
    with torch.inference_mode(), _autocast(x.device, autocast):
        for start in range(0, len(x), batch_size):
            logits = model(_memory_format(x[start:start + batch_size], model)).float()
            if sums is None:
                sums = torch.zeros((len(clips), logits.shape[1]), dtype=torch.float32, device=x.device)
            sums.index_add_(0, index[start:start + batch_size], logits)
    counts = torch.bincount(index, minlength=len(clips)).clamp_min(1).to(sums.dtype)
    return (sums / counts[:, None]).cpu().numpy().astype(np.float32)
