"""The report's pictures: a concept's exemplar clip with its supervoxel outlined, a voxel-
importance heat map over a clip, looping animations, and the deletion/insertion curves."""

from __future__ import annotations

import io as _io
import os
from typing import Any, Optional

import numpy as np

ORDER_STYLE = {  # (ranking, order) -> matplotlib style and legend label
    ("causal", "top"): ("#c0392b", "-", "causal order, most important first"),
    ("tcav", "top"): ("#e67e22", "--", "TCAV order (the paper's), most important first"),
    ("causal", "bottom"): ("#2471a3", "-", "causal order, least important first"),
    ("causal", "random"): ("#7f8c8d", ":", "random order (mean of the draws)"),
}



def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Per frame, the pixels of `mask` [T, H, W] on its border (within `width` px)."""
    from scipy import ndimage

    inner = ndimage.binary_erosion(mask, structure=np.ones((1, 3, 3), bool), iterations=width, border_value=0)
    return mask & ~inner


def exemplar_frames(frames: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (255, 214, 0)) -> np.ndarray:
    """The clip with the supervoxel outlined and everything outside it dimmed: uint8 [T, H, W, 3]."""
    out = frames.astype(np.float32)
    out[~mask] *= 0.45
    out = out.astype(np.uint8)
    out[outline(mask)] = colour
    return out


def heat_frames(frames: np.ndarray, importance: np.ndarray, vmax: float,
                tube: Optional[np.ndarray] = None) -> np.ndarray:
    """Voxel importance over the clip: red for positive, blue for negative, opacity by
    magnitude (scaled by `vmax`); the ground-truth actor tube outlined in white if given."""
    from matplotlib import colormaps

    scaled = np.clip(importance / vmax, -1.0, 1.0) if vmax > 0 else np.zeros_like(importance)
    colour = colormaps["RdBu_r"]((scaled + 1) / 2)[..., :3] * 255
    alpha = 0.75 * np.abs(scaled)[..., None]
    out = (frames.astype(np.float32) * (1 - alpha) + colour * alpha).astype(np.uint8)
    if tube is not None:
        out[outline(tube)] = 255
    return out


def encode_animation(frames: np.ndarray, image_format: str, frame_ms: int) -> bytes:
    """Frames uint8 [T, H, W, 3] as a looping animated WebP or GIF."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    buf = _io.BytesIO()
    if image_format == "webp":  # method 2: a third of method 4's encoding time, files 5% larger
        images[0].save(buf, format="WEBP", save_all=True, append_images=images[1:], duration=frame_ms, loop=0,
                       quality=80, method=2)
    else:
        images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
    return buf.getvalue()


def side_by_side(clips: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Clips uint8 [T, H, W, 3] of one size in a row, `gap` black pixels between them."""
    if not clips:
        raise ValueError("no clip to show")
    t, h, w, _ = clips[0].shape
    row = np.zeros((t, h, len(clips) * (w + gap) - gap, 3), np.uint8)
    for i, frames in enumerate(clips):
        row[:, :, i * (w + gap): i * (w + gap) + w] = frames
    return row


def mp4_bytes(frames: np.ndarray, frame_ms: int) -> bytes:
    """Frames uint8 [T, H, W, 3] as an MP4 (H.264 4:4:4, `pipeline.data.video.write_video`:
    lossless but for the colour conversion, within 2 levels)."""
    import tempfile

    from pipeline.data.video import write_video

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "clip.mp4")
        write_video(path, frames, fps=max(1, round(1000 / frame_ms)))
        with open(path, "rb") as f:
            return f.read()


def _pyplot() -> Any:
    """matplotlib's pyplot, drawing off screen, with text taken as it is: a class name is
    never parsed as math (`$` in a name would raise)."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


def curves_png(rows: list[dict[str, Any]], title: str) -> Optional[bytes]:
    """Deletion and insertion curves (class accuracy and mean class probability against k)."""
    plt = _pyplot()

    points = [r for r in rows if r["kind"] == "point"]
    if not points:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(8.4, 6.0), dpi=80, sharex=True)
    for col, mode in enumerate(("delete", "insert")):
        for row_i, metric in enumerate(("accuracy", "mean_prob")):
            ax = axes[row_i][col]
            for (ranking, order), (colour, style, label) in ORDER_STYLE.items():
                pts = sorted((r["k"], r[metric]) for r in points
                             if (r["mode"], r["ranking"], r["order"]) == (mode, ranking, order))
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=colour, marker="o", ms=3,
                            label=label)
            ax.set_ylim(-0.03, 1.03)
            ax.grid(alpha=0.3)
            if row_i == 0:
                ax.set_title({"delete": "deletion: top-k concepts removed",
                              "insert": "insertion: top-k concepts kept, rest removed"}[mode], fontsize=10)
            if row_i == 1:
                ax.set_xlabel("k (concepts)")
            if col == 0:
                ax.set_ylabel({"accuracy": "class accuracy", "mean_prob": "mean class probability"}[metric])
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def share_heatmap_png(matrix: np.ndarray, rows: list[str], columns: list[str], title: str) -> bytes:
    """A heat map of shares (rows x columns, 0..max) as a PNG, labelled."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(min(18, 2 + 0.22 * len(columns)), min(14, 1.5 + 0.25 * len(rows))), dpi=90)
    im = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0, vmax=max(float(matrix.max()), 1e-9))
    ax.set_xticks(range(len(columns)), columns, fontsize=7, rotation=90)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("global concept (largest first)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01, label="share of the class")
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
