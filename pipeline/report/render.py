"""What the report's pages share: a class's inputs (`ClassJob`) and its rendered section
(`ClassSection`, made by `pipeline.report.section`), the text helpers, the clip reader, the
order of a layer's cards and its table of curve areas."""

from __future__ import annotations

import html
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np


log = logging.getLogger("pipeline")
MISSING_CLIP = '<figure class="missing"><figcaption>{}: clip unavailable</figcaption></figure>'


@dataclass
class ClassJob:
    """Everything `render_class` needs for one class; travels to a Ray task. The task reads
    only the source clips (as the model actors do); it reads and writes nothing in the run
    folder, so the folder may be a URI or on another node."""

    index: int
    target_class: str
    settings: dict[str, Any]  # report config, clip config, dataset kind and root
    info: dict[
        str, Any
    ]  # the concepts stage's figures of the class, its layers' under "layers" (metrics/), or {}
    evaluated: dict[str, dict[str, Any]]  # the evaluate stage's figures per layer (metrics/), or {}
    concepts: list[dict[str, Any]]  # concepts.parquet rows of the class
    exemplars: dict[str, list[dict[str, Any]]]  # concept -> chosen concept_members rows
    masks: dict[
        tuple[str, int], np.ndarray
    ]  # (video, supervoxel) of each exemplar -> bool [T, H, W]
    heatmaps: list[dict[str, Any]]  # voxel_importance rows of the class's own scoring videos
    volumes: dict[str, np.ndarray]  # label volumes of the heat-map videos
    curves: list[dict[str, Any]]  # evaluation/ rows of the class
    videos: dict[str, dict[str, Any]] = field(default_factory=dict)  # videos.parquet rows it uses


@dataclass
class ClassSection:
    index: int
    target_class: str
    html: str
    files: dict[str, bytes]  # path under report/ -> the image
    summary: list[dict[str, Any]]  # one row per layer for the overview table


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Optional[float], digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def clip_reader(
    videos: dict[str, dict[str, Any]], clip_settings: dict[str, Any]
) -> Callable[[str], Any]:
    """`clip(video_id)`: the video's clip frames (uint8 [T, H, W, 3]) read from its source once,
    or None, with a warning, when the source moved, changed or broke since the run (the card
    says so)."""
    from pipeline.data.ingest import read_ingested_clip
    from pipeline.data.video import ClipSpec

    spec = ClipSpec(**clip_settings)
    clips: dict[str, Optional[np.ndarray]] = {}

    def clip(vid: str) -> Optional[np.ndarray]:
        if vid not in clips:
            try:
                clips[vid] = read_ingested_clip(videos[vid], spec).frames
            except Exception as e:
                log.warning("report: cannot read the clip of %r: %s", vid, e)
                clips[vid] = None
        return clips[vid]

    return clip


def saturated_tcav(rows: list[dict[str, Any]]) -> int:
    """How many of a (class, layer)'s concepts tie at a TCAV score of exactly 0 or 1, when they
    are at least half of them (0 otherwise): a TCAV ranking that says little."""
    at_edge = [r["tcav_mean"] for r in rows if r["tcav_mean"] in (0.0, 1.0)]
    tied = sum(at_edge.count(v) for v in set(at_edge) if at_edge.count(v) > 1)
    return tied if rows and tied >= len(rows) / 2 else 0


def card_order(
    rows: list[dict[str, Any]], by_causal: list[dict[str, Any]], rank_by: str, saturated: int
) -> tuple[list[dict[str, Any]], str]:
    """The concept cards in order and what orders them: `tcav` (the paper's rank), `causal`
    (causal importance, once the evaluate stage gave it), or `auto`: causal where TCAV is
    saturated, else TCAV."""
    use_causal = rank_by == "causal" or (rank_by == "auto" and saturated)
    if use_causal and len(by_causal) == len(rows):
        return by_causal, "causal"
    return rows, "tcav"


def auc_table(aucs: dict[tuple[str, str, str], dict[str, Any]]) -> str:
    if not aucs:
        return ""
    head = "<tr><th>ranking</th><th>curve</th><th>top</th><th>bottom</th><th>random</th></tr>"
    body = []
    for ranking in ("causal", "causal_crossfit", "tcav"):
        if not any(key[0] == ranking for key in aucs):
            continue
        for mode in ("delete", "insert"):
            cells = [
                f"{fmt(aucs.get((ranking, mode, o), {}).get('accuracy'))} "
                f"({fmt(aucs.get((ranking, mode, o), {}).get('mean_prob'))})"
                for o in ("top", "bottom", "random")
            ]
            name = "causal, cross-fitted" if ranking == "causal_crossfit" else ranking
            body.append(
                f"<tr><td>{name}</td><td>{'deletion' if mode == 'delete' else 'insertion'}</td>"
                + "".join(f"<td>{c}</td>" for c in cells)
                + "</tr>"
            )
    return (
        '<table class="auc"><caption>Area under the accuracy curves (in brackets: under the mean '
        "class probability curves; k scaled to [0, 1]). Deletion: lower is better for the "
        "top-first order; "
        "insertion: higher.</caption>" + head + "".join(body) + "</table>"
    )
