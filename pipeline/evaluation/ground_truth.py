"""Checks of an explanation against known truth (the synthetic corpus's actor voxels): does a
concept cover what decides the class, and where does voxel importance fall?"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.ndimage import binary_dilation


def actor_tube(mask: np.ndarray, pixels: int = 3) -> np.ndarray:
    """The actor's voxels [T, H, W] dilated by `pixels` in space, frame by frame (supervoxel
    boundaries do not follow an object's edge to the pixel)."""
    if pixels <= 0:
        return mask.astype(bool)
    structure = np.zeros((1, 2 * pixels + 1, 2 * pixels + 1), dtype=bool)
    yy, xx = np.mgrid[-pixels:pixels + 1, -pixels:pixels + 1]
    structure[0] = yy**2 + xx**2 <= pixels**2
    return binary_dilation(mask.astype(bool), structure=structure)


def clip_mask(source_mask: np.ndarray, frame_indices: Sequence[int], height: int, width: int) -> np.ndarray:
    """A source-resolution mask [T_src, H_src, W_src] mapped onto a clip: its frames, resized
    to the clip's size (nearest)."""
    m = source_mask[np.asarray(frame_indices)]
    if m.shape[1:] == (height, width):
        return m
    ys = (np.arange(height) + 0.5) * m.shape[1] / height
    xs = (np.arange(width) + 0.5) * m.shape[2] / width
    return m[:, ys.astype(int)][:, :, xs.astype(int)]


def inside_fraction(mask: np.ndarray, tube: np.ndarray) -> float:
    """Share of a supervoxel's voxels inside the tube."""
    n = int(mask.sum())
    return float((mask & tube).sum() / n) if n else 0.0


def positive_mass_inside(importance: np.ndarray, tube: np.ndarray) -> float:
    """Share of the positive voxel-importance mass that lies inside the tube (nan if none)."""
    pos = np.clip(importance, 0, None)
    total = float(pos.sum())
    return float(pos[tube].sum() / total) if total > 0 else float("nan")


def video_actor_tube(dataset_root: str, video: dict, pixels: int = 3) -> np.ndarray:
    """The dilated actor tube of a synthetic video in its clip's coordinates (`video`: its row of
    videos.parquet)."""
    from pipeline.data.synthetic import load_ground_truth_mask

    mask = clip_mask(load_ground_truth_mask(dataset_root, video["video_id"]), video["clip_frame_indices"],
                     video["clip_height"], video["clip_width"])
    return actor_tube(mask, pixels)
