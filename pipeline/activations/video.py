"""Activations of one video: from (clip, label volumes, kept supervoxels) to vectors.

A pure function of its inputs and a loaded model; the Ray actor only holds the model and
calls it. Only the clip and its label volumes reach the device: every patch is built there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from pipeline.activations.extract import clip_outputs, resolve_autocast, supervoxel_vectors
from pipeline.activations.params import ActivateParams
from pipeline.activations.patches import PatchRequest, patch_spec
from pipeline.models.registry import LoadedModel


@dataclass
class VideoActivations:
    video_id: str
    supervoxel_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    supervoxel_vectors: dict[str, np.ndarray] = field(default_factory=dict)  # layer -> [n, C]
    supervoxel_windows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    clip_vectors: dict[str, np.ndarray] = field(default_factory=dict)  # layer -> [C]
    clip_windows: int = 0
    logits: Optional[np.ndarray] = None
    gradients: dict[str, np.ndarray] = field(default_factory=dict)  # layer -> [C]
    gradient_class: Optional[int] = None
    seconds: float = 0.0
    device: str = ""


def requests_from_table(table: dict[str, np.ndarray]) -> list[PatchRequest]:
    """Patch requests for the supervoxels of a table (arrays as in `supervoxels/`); the owner
    is the row index."""
    return [PatchRequest(i, int(table["resolution"][i]), int(table["label"][i]),
                         tuple(int(table[k][i]) for k in ("t0", "t1", "y0", "y1", "x0", "x1")))  # type: ignore[misc]
            for i in range(len(table["supervoxel_id"]))]


def activate_video(model: LoadedModel, video_id: str, clip: np.ndarray, labels: Optional[np.ndarray],
                   table: dict[str, np.ndarray], label: Optional[str], params: ActivateParams,
                   device: torch.device, pad_short: bool = False) -> VideoActivations:
    """Vectors of every supervoxel in `table` and of the whole clip, the clip's logits and, when
    the video's label is one of the model's classes, the gradient of that class's logit.

    clip: uint8 [L, H, W, 3]; labels: uint16 [R, L, H, W] (None when there are no supervoxels);
    pad_short: see `pipeline.activations.patches.patch_spec`.
    """
    import time

    t0 = time.perf_counter()
    spec = patch_spec(model, params, pad_short)
    bf16 = resolve_autocast(params.autocast, device)
    t_clip = to_device(clip, device)
    out = VideoActivations(video_id=video_id, device=str(device))
    if labels is not None and len(table.get("supervoxel_id", ())):
        t_labels = to_device(labels.astype(np.int32), device)
        res = supervoxel_vectors(model.module, t_clip, t_labels, requests_from_table(table), spec, model.layers,
                                 params.batch_size, bf16)
        out.supervoxel_ids = np.asarray(table["supervoxel_id"], dtype=np.int64)[res.owners]
        out.supervoxel_vectors = res.vectors
        out.supervoxel_windows = res.windows
    gradient_class = None
    if params.gradients and label is not None and label in model.class_names:
        gradient_class = model.class_names.index(label)
    clip_res = clip_outputs(model.module, t_clip, spec, model.layers, gradient_class, params.batch_size, bf16)
    out.clip_vectors, out.logits, out.clip_windows = clip_res.vectors, clip_res.logits, clip_res.windows
    out.gradients, out.gradient_class = clip_res.gradients, clip_res.gradient_class
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    out.seconds = time.perf_counter() - t0
    return out


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Host -> device through pinned memory on a GPU (asynchronous copy)."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def prepare_model(model: LoadedModel, device: torch.device, fuse: bool = True,
                  channels_last: Optional[bool] = None) -> LoadedModel:
    """Move the model to the device, eval mode, no weight grads; (with `fuse`) each batch norm
    folded into the convolution before it (`fuse_conv_bn`); weights in channels_last_3d unless
    `channels_last` is False (None: on every device: cuDNN and oneDNN both prefer it), and the
    batches then follow (`extract._memory_format`). `bench/activate.py` measures it against
    the plain layout (`--plain-layout`)."""
    module = model.module.to(device)
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()
    if fuse:
        fuse_conv_bn(module, keep=model.layers)
    if channels_last is not False:
        try:
            module = module.to(memory_format=torch.channels_last_3d)
        except RuntimeError:  # a weight that is not 5-D (a 2D patch embedding, say): keep the layout
            pass
    model.module = module
    return model


def fuse_conv_bn(module: torch.nn.Module, keep: Sequence[str] = ()) -> list[str]:
    """Fold every eval-mode batch norm that directly follows a convolution inside an
    `nn.Sequential` into that convolution's weights and bias; the norm becomes an
    `nn.Identity`, so module names, and the output of every module after the pair, stay the
    same. A convolution named in `keep` (a hooked layer, whose own output must stay the
    pre-norm one) is left alone. Returns the names of the folded norms.

    The same model to rounding (a test checks the logits and hooked vectors), one pass over
    each activation fewer.
    """
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    keep = set(keep)
    folded = []
    for name, seq in list(module.named_modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for (cname, conv), (nname, norm) in zip(children, children[1:]):
            qualified = f"{name}.{cname}" if name else cname
            if (isinstance(conv, convs) and isinstance(norm, norms) and not norm.training
                    and norm.track_running_stats and qualified not in keep):
                setattr(seq, cname, fuse_conv_bn_eval(conv, norm))
                setattr(seq, nname, nn.Identity())
                folded.append(f"{name}.{nname}" if name else nname)
    return folded
