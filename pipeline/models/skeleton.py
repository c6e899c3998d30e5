"""A model's skeleton: its modules, names and shapes without weights, for the checks made
before any work (layer names, a checkpoint's fit)."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn

# torch.nn.init's fillers: a skeleton's weights are never read, and on the meta device a normal
# draw loads torch's Python reference kernels (torch._refs, and with them torch._dynamo): about
# 1.2 s of every driver's start, for the demo network's five convolutions.
_INIT_FILLERS = ("normal_", "uniform_", "trunc_normal_", "kaiming_normal_", "kaiming_uniform_",
                 "xavier_normal_", "xavier_uniform_", "orthogonal_")


@contextlib.contextmanager
def _no_weight_init() -> Iterator[None]:
    saved = {name: getattr(nn.init, name) for name in _INIT_FILLERS}
    try:
        for name in _INIT_FILLERS:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def skeleton(builder: Callable[..., nn.Module], **kwargs: Any) -> nn.Module:
    """The model with its module names, built on torch's meta device (no memory, no weights,
    torch.nn.init's fillers skipped); on the CPU for a builder that computes with tensors while
    building (PyTorchVideo's MViT)."""
    try:
        with torch.device("meta"), _no_weight_init():
            return builder(**kwargs)
    except (RuntimeError, NotImplementedError):
        return builder(**kwargs)
