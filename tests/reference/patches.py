"""The reference's patch step, done the plain way: one patch at a time on the host, numpy
masks and PIL's bicubic resize per frame, as the ACE/3D ACE scripts do.

The oracle for `pipeline.activations.patches` and the baseline of `bench/activate.py`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image


def reference_patch(clip: np.ndarray, mask: np.ndarray, box: Sequence[int], height: int, width: int,
                    fill: float = 117.0, resample: int = Image.BICUBIC) -> np.ndarray:
    """float [t1 - t0, height, width, 3] on 0-255: the masked, mean-filled, cropped, resized
    frames of one supervoxel."""
    t0, t1, y0, y1, x0, x1 = (int(v) for v in box)
    frames = []
    for t in range(t0, t1):
        m = mask[t][..., None].astype(float)
        patch = m * clip[t].astype(float) + (1.0 - m) * fill
        crop = Image.fromarray(patch[y0:y1, x0:x1].astype(np.uint8))
        frames.append(np.asarray(crop.resize((width, height), resample), dtype=float))
    return np.stack(frames)
