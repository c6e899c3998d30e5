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
from pipeline.run_folder import CONCEPT_PRESENCE, PREDICTIONS, RunFolder, partition

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
            present = folder.read(f"{CONCEPT_PRESENCE}/{partition(target_class=k, layer=layer)}",
                                  filter=pc.field("video_id") == vid).to_pylist() if folder.exists(
                f"{CONCEPT_PRESENCE}/{partition(target_class=k, layer=layer)}") else []
            parts.append(f'<h3>layer <code>{esc(layer)}</code></h3>')
            if present:
                parts.append("<table><tr><th>concept</th><th>supervoxels</th><th>share of the clip</th><th>frames</th>"
                             "<th>TCAV</th><th>causal importance</th></tr>" + "".join(
                                 f'<tr><td>{esc(r["concept"])}</td><td>{len(r["supervoxel_ids"])}</td>'
                                 f'<td>{fmt(r["share"])}</td><td>{r["t0"]}–{r["t1"] - 1}</td>'
                                 f'<td>{fmt(r["tcav_mean"])}</td><td>{fmt(r["causal_importance"], 3)}</td></tr>'
                                 for r in present) + "</table>")
            else:
                parts.append('<p class="meta">no supervoxel of this video falls within a concept of the class</p>')
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
voxel_importance/ and concept_presence/; this page shows a few of each class.</p>
{"".join(sections) or '<p class="meta">no video was explained</p>'}
</main></body></html>
"""
