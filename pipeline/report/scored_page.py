"""The report of a scored folder (`python -m pipeline.score`): report/index.html, for a few
videos of each explaining class (up to `report.heatmap_videos`, from the score step's record):
the model's prediction, the concepts of the finished run present in the video with where and
how much, and the TCAV-based and causal voxel importance over the clip, per layer. One Ray task
(`pipeline.stages.report.build_scored_report`) renders the page from the scored folder and the
source clips (`render_scored`); the driver writes what it returns."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.report.render import clip_reader, esc, fmt, slug
from pipeline.run_folder import CONCEPT_PRESENCE, CONCEPT_SENSITIVITY, PREDICTIONS, RunFolder, partition

MAX_VIDEOS = 60  # on the page, whatever the corpus


def render_scored(folder: RunFolder, settings: dict[str, Any], picks: list[tuple[str, str]], record: dict[str, Any],
                  source_root: str) -> tuple[str, dict[str, bytes]]:
    """The page and its images (in a Ray task)."""
    from pipeline.report.images import encode_animation, heat_frames
    from pipeline.scoring.voxel_importance import causal_scores, importance_map

    vids = sorted({v for _, v in picks})
    wanted = pa.array(vids, type=pa.string())
    videos = {r["video_id"]: r for r in folder.video_rows(vids)}
    pred = {r["video_id"]: r for r in folder.read(PREDICTIONS, columns=["video_id", "label", "logits",
                                                                        "predicted_class"],
                                                  filter=pc.is_in(pc.field("video_id"), wanted)).to_pylist()}
    causal = {r["concept"]: r["causal_importance"] for r in folder.concept_view(["concept",
                                                                                 "causal_importance"]).to_pylist()}
    volumes = folder.label_volumes(vids)
    clip = clip_reader(videos, settings["clip"])
    rep = settings["report"]
    ext = rep["format"]
    files: dict[str, bytes] = {}
    layers = record["stages"]["score"]["layers"]
    sections = []
    for i, (k, vid) in enumerate(picks):
        p = pred.get(vid, {})
        logits = np.asarray(p.get("logits") or [0.0], dtype=np.float64)
        prob = np.exp(logits - logits.max())
        prob /= prob.sum()
        parts = [f'<section class="class" id="video-{i}"><h2>{esc(vid)}</h2><p class="meta">label '
                 f'<b>{esc(p.get("label") or "none")}</b> &middot; predicted <b>{esc(p.get("predicted_class"))}</b> '
                 f'(probability {fmt(float(prob.max()))}) &middot; explained by the concepts of <b>{esc(k)}</b></p>']
        frames = clip(vid)
        importance = folder.voxel_importance_rows(vid, k)  # every layer's, read once per video
        for layer in layers:
            rows = [r for r in importance if r["layer"] == layer]
            parts.append(f'<h3>layer <code>{esc(layer)}</code></h3>')
            parts.append(presence_table(folder, vid, k, layer))
            parts.append(sensitivity_table(folder, vid, k, layer))
            if not rows or frames is None or vid not in volumes:
                continue
            row = rows[0]
            figs = []
            kinds = [("TCAV", row["scores"])]
            if any(causal.get(cn) is not None for cn in row["concepts"] if cn):  # the run's evaluate stage ran
                kinds.append(("causal", causal_scores(row["concepts"], causal)))
            for name, values in kinds:
                imp = importance_map(volumes[vid], row["supervoxel_ids"], values)
                vmax = float(np.abs(imp).max())
                rel = f"assets/s{i:03d}-{slug(vid)[-40:]}-{slug(layer)}-{name}.{ext}"
                files[rel] = encode_animation(heat_frames(frames, imp, vmax), ext, int(rep["frame_ms"]))
                figs.append(f'<figure><img src="{esc(rel)}" alt="{name} voxel importance of {esc(vid)}">'
                            f"<figcaption>{name}, max |score| {fmt(vmax)}</figcaption></figure>")
            parts.append(f'<div class="heatrow">{"".join(figs)}</div>')
        parts.append("</section>")
        sections.append("".join(parts))
    stage = record["stages"]["score"]
    return page(source_root, stage, sections), files


def presence_table(folder: RunFolder, video_id: str, target_class: str, layer: str) -> str:
    """The concepts of the class present in the video at a layer (concept_presence/)."""
    name = f"{CONCEPT_PRESENCE}/{partition(target_class=target_class, layer=layer)}"
    present = (
        folder.read(name, filter=pc.field("video_id") == video_id).to_pylist()
        if folder.exists(name)
        else []
    )
    if not present:
        return '<p class="meta">no supervoxel of this video falls within a concept of the class</p>'
    return (
        "<table><tr><th>concept</th><th>supervoxels</th><th>share of the clip</th><th>frames</th>"
        "<th>TCAV</th><th>causal importance</th></tr>"
        + "".join(
            f"<tr><td>{esc(r['concept'])}</td><td>{len(r['supervoxel_ids'])}</td>"
            f"<td>{fmt(r['share'])}</td><td>{r['t0']}–{r['t1'] - 1}</td>"
            f"<td>{fmt(r['tcav_mean'])}</td><td>{fmt(r['causal_importance'], 3)}</td></tr>"
            for r in present
        )
        + "</table>"
    )


def sensitivity_table(
    folder: RunFolder, video_id: str, target_class: str, layer: str, shown: int = 5
) -> str:
    """The video's most sensitive concepts of its predicted class at a layer (concept_sensitivity/),
    with the random baseline; empty when the class is not the one it is predicted as."""
    name = f"{CONCEPT_SENSITIVITY}/{partition(target_class=target_class, layer=layer)}"
    if not folder.exists(name):
        return ""
    rows = folder.read(name, filter=pc.field("video_id") == video_id).to_pylist()
    if not rows:
        return ""
    base = next((r for r in rows if r["concept"] == "random"), None)
    top = sorted(
        (r for r in rows if r["concept"] != "random"), key=lambda r: -r["derivative_mean"]
    )[:shown]
    said = "" if base is None else f" (random baseline: {fmt(base['share_positive'])})"
    return (
        f"<p class=\"meta\">the decision's sensitivity to the concepts, along the run's CAVs{said}</p>"
        "<table><tr><th>concept</th><th>share of CAVs positive</th><th>mean derivative</th></tr>"
        + "".join(
            f"<tr><td>{esc(r['concept'])}</td><td>{fmt(r['share_positive'])}</td>"
            f"<td>{r['derivative_mean']:.3g}</td></tr>"
            for r in top
        )
        + "</table>"
    )


def page(source_root: str, stage: dict[str, Any], sections: list[str]) -> str:
    from pipeline.report.page import CSS

    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>3D ACE: videos scored with a finished run</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body><header class="top"><h1>Videos scored with a finished run's concepts</h1>
<p>{stage["videos"]} videos; concepts of <code>{esc(source_root)}</code></p></header><main>
<p class="meta">Each supervoxel of a video goes to the nearest concept of the class (the predicted one, and the label
when it is another class of the run), within the concept's radius, and takes its mean TCAV score (or its causal
importance); a voxel takes the mean over the supervoxels covering it: red positive, blue negative. Every video is in
voxel_importance/ and concept_presence/; this page shows a few of each class. Under each layer, where the class is
the predicted one, the concepts the decision is most sensitive to: the predicted class's gradient along each of the
run's saved CAVs of the concept (concept_sensitivity/).</p>
{"".join(sections) or '<p class="meta">no video was explained</p>'}
</main></body></html>
"""
