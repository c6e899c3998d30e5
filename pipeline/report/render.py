"""One class's section of the report, rendered from a `ClassJob` (everything it needs, read
from the run folder by `pipeline.report.build`): its concept cards, curves and heat maps, as
HTML and the images it links to (returned, not written)."""

from __future__ import annotations

import html
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from pipeline.report.images import curves_png, encode_animation, exemplar_frames, heat_frames

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
    info: dict[str, Any]  # the concepts stage's figures of the class, its layers' under "layers" (metrics/), or {}
    evaluated: dict[str, dict[str, Any]]  # the evaluate stage's figures per layer (metrics/), or {}
    concepts: list[dict[str, Any]]  # concepts.parquet rows of the class
    exemplars: dict[str, list[dict[str, Any]]]  # concept -> chosen concept_members rows
    masks: dict[tuple[str, int], np.ndarray]  # (video, supervoxel) of each exemplar -> bool [T, H, W]
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


def clip_reader(videos: dict[str, dict[str, Any]], clip_settings: dict[str, Any]) -> Callable[[str], Any]:
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


def render_class(job: ClassJob) -> ClassSection:
    """A class's section of the report and its images (returned, not written)."""
    from pipeline.evaluation.ground_truth import video_actor_tube
    from pipeline.scoring.voxel_importance import causal_scores, importance_map

    s = job.settings
    rep, ext = s["report"], s["report"]["format"]
    clip = clip_reader(job.videos, s["clip"])
    base = f"assets/c{job.index:04d}-{slug(job.target_class)[:40]}"
    causal = {r["concept"]: r.get("causal_importance") for r in job.concepts}
    tubes: dict[str, Optional[np.ndarray]] = {}  # the ground-truth actor, read once per video
    files: dict[str, bytes] = {}
    video_index: dict[str, int] = {}  # file names by index: two ids may slug alike

    def vname(vid: str) -> str:
        return f"v{video_index.setdefault(vid, len(video_index)):03d}-{slug(vid)[-40:]}"

    def save(frames: np.ndarray, name: str) -> str:
        rel = f"{base}/{name}.{ext}"
        if rel not in files:
            files[rel] = encode_animation(frames, ext, int(rep["frame_ms"]))
        return rel

    parts = [f'<section class="class" id="class-{job.index}"><h2>{esc(job.target_class)}</h2>']
    layers = list(dict.fromkeys([*job.info.get("layers", {}), *(r["layer"] for r in job.concepts)]))
    accuracy = job.info.get("scoring_accuracy", job.concepts[0]["class_accuracy"] if job.concepts else None)
    recognised = job.info.get("recognised", job.concepts[0]["class_recognised"] if job.concepts else True)
    if accuracy is not None:
        parts.append(f'<p class="meta">model accuracy on the class\'s scoring videos: <b>{fmt(accuracy)}</b>'
                     + ("" if recognised else
                        ' <span class="warn">not significantly above chance: read its concepts with care</span>')
                     + "</p>")
    if not job.concepts:
        parts.append('<p class="meta">no concept was accepted for this class at any layer</p>')
    summary = []
    for layer in layers:
        rows = sorted((r for r in job.concepts if r["layer"] == layer), key=lambda r: r["rank"])
        lslug = slug(layer)
        by_causal = sorted((r for r in rows if r.get("causal_importance") is not None),
                           key=lambda r: -r["causal_importance"])
        causal_rank = {r["concept"]: i + 1 for i, r in enumerate(by_causal)}
        curve_rows = [r for r in job.curves if r["layer"] == layer]
        aucs = {(r["ranking"], r["mode"], r["order"]): r for r in curve_rows if r["kind"] == "auc"}
        ev = job.evaluated.get(layer, {})
        rho = ev.get("spearman_tcav_causal")
        summary.append({"layer": layer, "concepts": len(rows), "significant": sum(r["significant"] for r in rows),
                        "spearman": rho,
                        "top_tcav": rows[0]["concept"] if rows else None,
                        "top_causal": by_causal[0]["concept"] if by_causal else None,
                        "stability": (float(np.mean([r["stability"] for r in rows]))
                                      if rows and rows[0].get("stability") is not None else None),
                        "crossfit_top1": job.evaluated.get(layer, {}).get(
                            "crossfit_causal_top1_deletion_accuracy_drop_vs_random"),
                        "crossfit_gap": {w: (ev.get(f"crossfit_causal_deletion_{w}auc_gap"),
                                             [ev[f"crossfit_causal_deletion_{w}auc_gap_ci95.{i}"] for i in (0, 1)]
                                             if f"crossfit_causal_deletion_{w}auc_gap_ci95.0" in ev else None)
                                         for w in ("", "prob_")},
                        "top1": (job.evaluated.get(layer, {}).get("causal_top1_deletion_accuracy_drop_vs_random"),
                                 job.evaluated.get(layer, {}).get("tcav_top1_deletion_accuracy_drop_vs_random"),
                                 job.evaluated.get(layer, {}).get(
                                     "best_single_concept_top1_deletion_accuracy_drop_vs_random")),
                        "empty": job.evaluated.get(layer, {}).get("mean_filled_clip_accuracy"),
                        "del_top": aucs.get(("causal", "delete", "top"), {}).get("accuracy"),
                        "del_bottom": aucs.get(("causal", "delete", "bottom"), {}).get("accuracy")})
        parts.append(f'<section class="layer" id="class-{job.index}-{esc(lslug)}"><h3>{esc(job.target_class)} '
                     f'&middot; layer <code>{esc(layer)}</code></h3>')
        saturated = saturated_tcav(rows)
        cards, by = card_order(rows, by_causal, rep.get("rank_by", "auto"), saturated)
        if saturated:  # what holds first: the TCAV ranking cannot tell these concepts apart
            parts.append(f'<p class="warn">TCAV is saturated here: {saturated} of {len(rows)} concepts score exactly 0 '
                         "or 1 and tie, so their TCAV ranking says little"
                         + ("; the cards follow causal importance instead (report.rank_by)" if by == "causal" else "")
                         + ".</p>")
        parts.append(f'<p class="meta">{len(rows)} concepts, {summary[-1]["significant"]} significant'
                     + (f'; Spearman correlation of the TCAV and causal rankings: <b>{fmt(rho)}</b>' if rho is not None
                        else "")
                     + (f' <span class="warn">the model predicts this class for {fmt(summary[-1]["empty"])} of its '
                        'wholly mean-filled clips: deleting concepts can hardly take the class away, so the '
                        'deletion curves say little</span>' if (summary[-1]["empty"] or 0) >= 0.5 else "") + "</p>")
        ev = job.evaluated.get(layer, {})
        if "pointing_game_random" in ev:
            parts.append('<p class="meta">On the actor (ground truth), the scoring videos\' voxel maps: pointing game '
                         f'TCAV <b>{fmt(ev["pointing_game_tcav"])}</b>, causal <b>{fmt(ev["pointing_game_causal"])}'
                         f'</b>, a random map {fmt(ev["pointing_game_random"])}; IoU of the top-q% voxels with the '
                         f'actor tube (q its share of the clip) TCAV <b>{fmt(ev["top_share_iou_tcav"])}</b>, causal '
                         f'<b>{fmt(ev["top_share_iou_causal"])}</b>, random {fmt(ev["top_share_iou_random"])}</p>')
        # concept cards
        parts.append('<div class="cards">')
        for r in cards[: int(rep["max_concepts"])]:
            cname = r["concept"].rsplit("/", 1)[-1]
            figs = []
            for m in job.exemplars.get(r["concept"], []):
                vid, sid = m["video_id"], int(m["supervoxel_id"])
                frames = clip(vid)
                if frames is None or (vid, sid) not in job.masks:
                    figs.append(MISSING_CLIP.format(esc(vid)))
                    continue
                mask = job.masks[(vid, sid)]
                rel = save(exemplar_frames(frames, mask), f"{lslug}/{slug(cname)}-{vname(vid)}-{sid}")
                span = np.flatnonzero(mask.any(axis=(1, 2)))
                figs.append(f'<figure><img src="{esc(rel)}" alt="{esc(cname)} in {esc(vid)}" loading="lazy">'
                            f'<figcaption>{esc(vid)}<br>frames {span[0]}–{span[-1]}</figcaption></figure>')
            rnd = r.get("tcav_mean_randomised")
            parts.append(
                f'<article class="card{" sig" if r["significant"] else ""}">'
                f'<header><span class="rank">#{r["rank"]}</span> <b>{esc(cname)}</b>'
                f'{" <span class=badge>significant</span>" if r["significant"] else ""}</header>'
                f'<dl><dt>TCAV</dt><dd>{fmt(r["tcav_mean"])} &plusmn; {fmt(r["tcav_std"])}</dd>'
                f'<dt>p-value</dt><dd>{r["p_value"]:.1e}</dd>'
                + (f'<dt>TCAV magnitude</dt><dd>{fmt(r["tcav_magnitude_mean"])} (p {r["magnitude_p_value"]:.1e})</dd>'
                   if r.get("tcav_magnitude_mean") is not None else "") +
                f'<dt>causal importance</dt><dd>{fmt(r.get("causal_importance"), 3)}'
                + (f' (#{causal_rank[r["concept"]]})' if r["concept"] in causal_rank else "") + "</dd>"
                + (f'<dt>by random masking</dt><dd>{fmt(r["causal_importance_masking"], 3)}</dd>'
                   if r.get("causal_importance_masking") is not None else "") +
                f'<dt>members</dt><dd>{r["size"]} from {r["num_videos"]} videos</dd>'
                + (f'<dt>stability</dt><dd>{fmt(r["stability"])} of the resamples</dd>'
                   if r.get("stability") is not None else "") +
                f'<dt>CAV accuracy</dt><dd>{fmt(r["cav_accuracy"])}</dd>'
                + (f'<dt>TCAV, weights after the layer randomised</dt><dd>{fmt(rnd)}</dd>' if rnd is not None else "")
                + f'</dl><div class="exemplars">{"".join(figs)}</div></article>')
        if len(rows) > int(rep["max_concepts"]):
            parts.append(f'<p class="meta">{len(rows) - int(rep["max_concepts"])} more concepts in '
                         "concepts.parquet (report.max_concepts)</p>")
        parts.append("</div>")
        # curves
        png = curves_png(curve_rows, f"{job.target_class} · {layer}: deletion and insertion "
                                     f"({curve_rows[0]['n_videos'] if curve_rows else 0} scoring videos)")
        if png is not None:
            rel = f"{base}/{lslug}/curves.png"
            files[rel] = png
            parts.append(f'<h4>Deletion and insertion</h4><div class="curves"><img class="plot" src="{esc(rel)}" '
                         f'alt="deletion and insertion curves of {esc(job.target_class)} at {esc(layer)}">'
                         f"{auc_table(aucs)}</div>")
        elif rows:
            parts.append('<p class="meta">no deletion/insertion curves: the evaluate stage has not run</p>')
        # heat maps
        maps = [h for h in job.heatmaps if h["layer"] == layer][: int(rep["heatmap_videos"])]
        if maps:
            parts.append('<h4>Voxel importance on scoring videos</h4><p class="meta">Each voxel takes the score '
                         "of the concept its supervoxels belong to (mean over the supervoxels covering it): red "
                         "positive, blue negative, opacity by magnitude"
                         + ("; the ground-truth actor is outlined in white" if s["dataset_kind"] == "synthetic" else "")
                         + ".</p><div class=heatmaps>")
        for h in maps:
            vid = h["video_id"]
            frames = clip(vid)
            if frames is None or vid not in job.volumes:
                continue
            if s["dataset_kind"] == "synthetic" and vid not in tubes:
                try:
                    tubes[vid] = video_actor_tube(s["dataset_root"], job.videos[vid], 0)
                except Exception:  # no ground truth beside this video
                    tubes[vid] = None
            tube = tubes.get(vid)
            figs = [f'<figure><img src="{esc(save(frames, f"{vname(vid)}-clip"))}" alt="clip {esc(vid)}">'
                    f"<figcaption>{esc(vid)}</figcaption></figure>"]
            scores = {"TCAV (the paper's)": h["scores"]}
            if any(causal.get(cn) is not None for cn in h["concepts"] if cn):
                scores["causal"] = causal_scores(h["concepts"], causal)
            for name, values in scores.items():
                imp = importance_map(job.volumes[vid], h["supervoxel_ids"], values)
                vmax = float(np.abs(imp).max())
                rel = save(heat_frames(frames, imp, vmax, tube), f"{lslug}/{vname(vid)}-{slug(name.split()[0])}")
                figs.append(f'<figure><img src="{esc(rel)}" alt="{esc(name)} voxel importance of {esc(vid)}">'
                            f"<figcaption>{esc(name)}, max |score| {fmt(vmax)}</figcaption></figure>")
            parts.append(f'<div class="heatrow">{"".join(figs)}</div>')
        if maps:
            parts.append("</div>")
        parts.append("</section>")
    parts.append("</section>")
    return ClassSection(job.index, job.target_class, "\n".join(parts), files, summary)


def saturated_tcav(rows: list[dict[str, Any]]) -> int:
    """How many of a (class, layer)'s concepts tie at a TCAV score of exactly 0 or 1, when they
    are at least half of them (0 otherwise): a TCAV ranking that says little."""
    at_edge = [r["tcav_mean"] for r in rows if r["tcav_mean"] in (0.0, 1.0)]
    tied = sum(at_edge.count(v) for v in set(at_edge) if at_edge.count(v) > 1)
    return tied if rows and tied >= len(rows) / 2 else 0


def card_order(rows: list[dict[str, Any]], by_causal: list[dict[str, Any]], rank_by: str,
               saturated: int) -> tuple[list[dict[str, Any]], str]:
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
            cells = [f'{fmt(aucs.get((ranking, mode, o), {}).get("accuracy"))} '
                     f'({fmt(aucs.get((ranking, mode, o), {}).get("mean_prob"))})' for o in ("top", "bottom", "random")]
            name = "causal, cross-fitted" if ranking == "causal_crossfit" else ranking
            body.append(f"<tr><td>{name}</td><td>{'deletion' if mode == 'delete' else 'insertion'}</td>"
                        + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ('<table class="auc"><caption>Area under the accuracy curves (in brackets: under the mean class '
            "probability curves; k scaled to [0, 1]). Deletion: lower is better for the top-first order; "
            "insertion: higher.</caption>" + head + "".join(body) + "</table>")
