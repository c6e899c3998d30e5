"""Models: the registry (`registry.py`), the demo network (`demo.py`) and input preparation."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def clip_to_input(frames: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 frames [..., T, H, W, 3] (0-255) -> float [..., 3, T, H, W], normalised as the
    model expects (mean/std on the 0-1 scale)."""
    x = torch.as_tensor(frames)
    x = x.movedim(-1, -4).float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype).view(3, 1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(3, 1, 1, 1)
    return (x - m) / s
