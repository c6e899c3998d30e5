"""A finished run's concepts as clips people can take away: the exemplars of a concept as
arrays with their supervoxel masks (`concept_clips`), written as an MP4, GIF or WebP
(`export_concept`), and a class's concepts inline in a notebook (`ClassView`).

The exemplars are those of the report: the concept's members nearest its centroid, one per
video while there are videos to spare; each clip is read from its source video as the run read
it (the run's clip settings), its supervoxel's voxels from the run's label volumes.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from pipeline import schemas
from pipeline.report.build import class_rows, pick_exemplars
from pipeline.report.images import encode_animation, exemplar_frames, mp4_bytes, side_by_side
from pipeline.report.lead import lead
from pipeline.report.render import clip_reader, esc, fmt
from pipeline.run_folder import CONCEPT_MEMBERS, EVALUATE_METRICS, RunFolder
from pipeline.segmentation.supervoxels import supervoxel_mask

@dataclass(frozen=True)
class ConceptClip:
    """One exemplar of a concept."""

    concept: str
    video_id: str
    supervoxel_id: int
    distance: float  # to the concept's centroid
    frames: np.ndarray  # uint8 [T, H, W, 3]: the video's clip as the run read it
    mask: np.ndarray  # bool [T, H, W]: the supervoxel's voxels

    def outlined(self) -> np.ndarray:
        """The clip with the supervoxel outlined in yellow and the rest dimmed (as the report)."""
        return exemplar_frames(self.frames, self.mask)


def concept_row(folder: RunFolder, concept: str) -> dict[str, Any]:
    """The concept's concepts.parquet row: its class and layer."""
    rows = folder.concept_view(["target_class", "layer", "concept"]).to_pylist()
    for r in rows:
        if r["concept"] == concept:
            return r
    shown = ", ".join(r["concept"] for r in rows[:5])
    raise KeyError(f"no concept {concept!r} in {folder.root} (concepts.parquet has e.g. {shown})")


def concept_clips(folder: RunFolder, clip_settings: dict[str, Any], concept: str,
                  k: int = 3, target_class: Optional[str] = None) -> list[ConceptClip]:
    """The `k` exemplars of `concept` (its name in concepts.parquet), nearest the centroid
    first. A source video that moved or changed since the run is left out, with a warning.
    `target_class`: the concept's class, when the caller knows it (else looked up)."""
    if target_class is None:
        target_class = concept_row(folder, concept)["target_class"]
    members = sorted((m for m in class_rows(folder, CONCEPT_MEMBERS, target_class)
                      if m["concept"] == concept), key=lambda m: m["distance"])
    chosen = pick_exemplars(members, k)
    ids = sorted({m["video_id"] for m in chosen})
    clip = clip_reader({r["video_id"]: r for r in folder.video_rows(ids)}, clip_settings)
    volumes = folder.label_volumes(ids)
    out = []
    for m in chosen:
        frames = clip(m["video_id"])
        if frames is None or m["video_id"] not in volumes:
            continue
        out.append(ConceptClip(concept, m["video_id"], int(m["supervoxel_id"]),
                               float(m["distance"]), frames,
                               supervoxel_mask(volumes[m["video_id"]], m["supervoxel_id"])))
    return out


def export_concept(clips: list[ConceptClip], path: str, frame_ms: int = 125) -> str:
    """Write the clips, outlined, side by side as `path`: .mp4 (H.264 4:4:4, lossless but for
    the colour conversion: within 2 levels; players that take only 4:2:0, browsers among them,
    want the .webp or .gif), .gif or .webp (looping animations)."""
    frames = side_by_side([c.outlined() for c in clips])
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".mp4", ".gif", ".webp"):
        raise ValueError(f"{path}: write a .mp4, .gif or .webp")
    data = (mp4_bytes(frames, frame_ms) if ext == ".mp4"
            else encode_animation(frames, ext[1:], frame_ms))
    with open(path, "wb") as f:
        f.write(data)
    return path


def inline_clip(frames: np.ndarray, alt: str) -> str:
    """An animation as an <img> holding its own data (a notebook's or a one-file page's)."""
    data = base64.b64encode(encode_animation(frames, "webp", 125)).decode()
    return f'<img src="data:image/webp;base64,{data}" alt="{esc(alt)}" style="margin:2px">'


class ClassView:
    """A class's concepts for a notebook: per layer, the ranking that holds under deletion,
    said in one sentence, and the concepts that matter by it with two clips each, inline."""

    def __init__(self, folder: RunFolder, config: dict[str, Any], target_class: str) -> None:
        """`config`: the run's (run.json's); the concepts are read with the evaluate stage's
        causal importance joined (None where it has none)."""
        self.folder, self.clip_settings, self.target_class = folder, config["clip"], target_class
        self.rank_by = config.get("report", {}).get("rank_by", "auto")
        self.concepts = [r for r in folder.concept_view([n for n in schemas.CONCEPT_VIEW.names
                                                         if n != "centroid"]).to_pylist()
                         if r["target_class"] == target_class]
        if not self.concepts:
            raise KeyError(f"no concept of class {target_class!r} in {folder.root}")

    def _repr_html_(self) -> str:
        evaluated = self.folder.metrics(EVALUATE_METRICS).get(self.target_class, {})
        parts = [f"<h3>{esc(self.target_class)}</h3>"]
        for layer in dict.fromkeys(r["layer"] for r in self.concepts):
            rows = sorted((r for r in self.concepts if r["layer"] == layer),
                          key=lambda r: r["rank"])
            the_lead = lead(rows, evaluated.get(layer, {}), self.rank_by)
            parts.append(f"<h4>layer {esc(layer)}</h4><p>{esc(the_lead.sentence)}</p>")
            if not the_lead.concepts:
                parts.append(f"<p>{esc(the_lead.empty)}</p>")
            for r in the_lead.concepts:
                clips = concept_clips(self.folder, self.clip_settings, r["concept"], 2,
                                      self.target_class)
                figs = "".join(inline_clip(c.outlined(), c.video_id) for c in clips)
                parts.append(f'<div><b>{esc(r["concept"].rsplit("/", 1)[-1])}</b>: TCAV '
                             f'{fmt(r["tcav_mean"])}, causal {fmt(r.get("causal_importance"), 3)}'
                             f"<br>{figs}</div>")
        return "".join(parts)
