"""One class's section of the report, rendered from a `ClassJob` (everything it needs, read
from the run folder by `pipeline.report.build`), as HTML and the images it links to (returned,
not written).

The section leads with the answer: per layer, which ranking of the concepts holds and why, in
one sentence (`pipeline.report.lead`), and the concepts that matter by it, each with its clips
and three numbers. The diagnostics follow: every concept's card, the deletion and insertion
curves, the voxel-importance heat maps of a few scoring videos.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from pipeline.concepts.user import USER_RULE
from pipeline.report.images import (curves_png, encode_animation, exemplar_frames, heat_frames,
                                    mp4_bytes, side_by_side)
from pipeline.report.lead import Lead, lead, missing
from pipeline.report.render import (
    MISSING_CLIP,
    ClassJob,
    ClassSection,
    auc_table,
    card_order,
    clip_reader,
    esc,
    fmt,
    saturated_tcav,
    slug,
)


class _Section:
    """The images of one class's section as they are made (by relative path under report/),
    and the HTML pieces that show them."""

    def __init__(self, job: ClassJob) -> None:
        self.job, self.rep = job, job.settings["report"]
        self.clip = clip_reader(job.videos, job.settings["clip"])
        self.base = f"assets/c{job.index:04d}-{slug(job.target_class)[:40]}"
        self.prefix = "../" if job.settings.get("pages") else ""  # a class page sits in classes/
        self.files: dict[str, bytes] = {}
        self.video_index: dict[str, int] = {}  # file names by index: two ids may slug alike
        self.causal = {r["concept"]: r.get("causal_importance") for r in job.concepts}
        self.tubes: dict[str, Optional[np.ndarray]] = {}  # the ground-truth actor, once per video
        self.outlined: dict[str, dict[tuple[str, int], np.ndarray]] = {}  # a concept's clips drawn

    def vname(self, vid: str) -> str:
        return f"v{self.video_index.setdefault(vid, len(self.video_index)):03d}-{slug(vid)[-40:]}"

    def save(self, frames: np.ndarray, name: str) -> str:
        """The animation's `src` (made once per name)."""
        rel = f"{self.base}/{name}.{self.rep['format']}"
        if rel not in self.files:
            self.files[rel] = encode_animation(
                frames, self.rep["format"], int(self.rep["frame_ms"])
            )
        return esc(self.prefix + rel)

    def exemplars(self, concept: str, lslug: str, most: Optional[int] = None) -> str:
        """A concept's exemplar clips as figures (one saying so where a clip is unavailable)."""
        cname, figs = concept.rsplit("/", 1)[-1], []
        for m in self.job.exemplars.get(concept, [])[:most]:
            vid, sid = m["video_id"], int(m["supervoxel_id"])
            frames = self.clip(vid)
            if frames is None or (vid, sid) not in self.job.masks:
                figs.append(MISSING_CLIP.format(esc(vid)))
                continue
            mask = self.job.masks[(vid, sid)]
            outlined = exemplar_frames(frames, mask)
            if self.rep.get("concept_videos"):  # kept for the concept's MP4 (`card`)
                self.outlined.setdefault(concept, {})[(vid, sid)] = outlined
            src = self.save(outlined, f"{lslug}/{slug(cname)}-{self.vname(vid)}-{sid}")
            span = np.flatnonzero(mask.any(axis=(1, 2)))
            figs.append(
                f'<figure><img src="{src}" alt="{esc(cname)} in {esc(vid)}" loading="lazy">'
                f"<figcaption>{esc(vid)}<br>frames {span[0]}–{span[-1]}</figcaption></figure>"
            )
        return f'<div class="exemplars">{"".join(figs)}</div>'

    def answer(self, layer: str, the_lead: Lead, n_concepts: int) -> str:
        """The layer's lead: the sentence, then the concepts that matter with clips and numbers."""
        cls = (
            "lead" if the_lead.holds else "lead untested" if the_lead.holds is None else "lead weak"
        )
        out = [
            f'<div class="{cls}"><h3>Layer <code>{esc(layer)}</code>: the concepts that matter</h3>'
            f"<p>{esc(the_lead.sentence)}</p>"
        ]
        if not the_lead.concepts:
            out.append(f'<p class="meta">{esc(the_lead.empty)}</p>')
        out.append('<div class="tiles">')
        for r in the_lead.concepts:
            sig = "significant" if r["significant"] else "not significant"
            name = esc(r["concept"].rsplit("/", 1)[-1])
            out.append(
                f'<article class="tile"><header><b>{name}</b></header>'
                f"<p>TCAV <b>{fmt(r['tcav_mean'])}</b> ({sig}) &middot; causal "
                f"<b>{fmt(r.get('causal_importance'), 3)}</b> &middot; {r['num_videos']} videos</p>"
                f"{self.exemplars(r['concept'], slug(layer), 2)}</article>"
            )
        out.append("</div></div>")
        return "".join(out)

    def card(self, r: dict[str, Any], lslug: str, causal_rank: dict[str, int]) -> str:
        """A concept's card in the diagnostics: every figure the run has of it, and its clips."""
        rnd, mag = r.get("tcav_mean_randomised"), r.get("tcav_magnitude_mean")
        rank = f" (#{causal_rank[r['concept']]})" if r["concept"] in causal_rank else ""
        rows = [
            ("TCAV", f"{fmt(r['tcav_mean'])} &plusmn; {fmt(r['tcav_std'])}"),
            ("p", f"{r['p_value']:.1e}"),
            ("magnitude", None if mag is None else f"{fmt(mag)} (p {r['magnitude_p_value']:.1e})"),
            ("causal", f"{fmt(r.get('causal_importance'), 3)}{rank}"),
            (
                "masking",
                None
                if r.get("causal_importance_masking") is None
                else fmt(r["causal_importance_masking"], 3),
            ),
            ("members", f"{r['size']} from {r['num_videos']} videos"),
            ("stability", None if r.get("stability") is None else fmt(r["stability"])),
            ("CAV acc.", fmt(r["cav_accuracy"])),
            ("randomised", None if rnd is None else fmt(rnd)),
        ]
        badge = " <span class=badge>significant</span>" if r["significant"] else ""
        if r.get("rule") == USER_RULE:
            badge += ' <span class="badge user">your concept</span>'
        figs = self.exemplars(r["concept"], lslug)
        if self.rep.get("concept_videos") and r["significant"] and self.outlined.get(r["concept"]):
            rel = f"{self.base}/{lslug}/{slug(r['concept'].rsplit('/', 1)[-1])}.mp4"
            clips = side_by_side(list(self.outlined[r["concept"]].values()))
            self.files[rel] = mp4_bytes(clips, int(self.rep["frame_ms"]))
            rows.append(("video", f'<a href="{esc(self.prefix + rel)}">its clips as MP4</a>'))
        return (
            f'<article class="card{" sig" if r["significant"] else ""}"><header><span class="rank">'
            f"#{r['rank']}</span> <b>{esc(r['concept'].rsplit('/', 1)[-1])}</b>{badge}</header><dl>"
            + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows if v is not None)
            + f"</dl>{figs}</article>"
        )

    def curves(
        self, layer: str, curve_rows: list[dict[str, Any]], aucs: dict, has_rows: bool
    ) -> str:
        title = (
            f"{self.job.target_class} · {layer}: deletion and insertion "
            f"({curve_rows[0]['n_videos'] if curve_rows else 0} scoring videos)"
        )
        png = curves_png(curve_rows, title)
        if png is None:
            return (
                '<p class="meta">no deletion/insertion curves: the evaluate stage has not run</p>'
                if has_rows
                else ""
            )
        rel = f"{self.base}/{slug(layer)}/curves.png"
        self.files[rel] = png
        return (
            f'<h4>Deletion and insertion</h4><div class="curves"><img class="plot" '
            f'src="{esc(self.prefix + rel)}" alt="deletion and insertion curves of '
            f'{esc(self.job.target_class)} at {esc(layer)}">{auc_table(aucs)}</div>'
        )

    def heatmaps(self, layer: str) -> str:
        from pipeline.evaluation.ground_truth import video_actor_tube
        from pipeline.scoring.voxel_importance import causal_scores, importance_map

        s = self.job.settings
        maps = [h for h in self.job.heatmaps if h["layer"] == layer][
            : int(self.rep["heatmap_videos"])
        ]
        if not maps:
            return ""
        synthetic = s["dataset_kind"] == "synthetic"
        out = [
            '<h4>Voxel importance on scoring videos</h4><p class="meta">Each voxel takes the score '
            "of the concept its supervoxels belong to (mean over the supervoxels covering it): red "
            "positive, "
            "blue negative, opacity by magnitude"
            + ("; the ground-truth actor is outlined in white" if synthetic else "")
            + ".</p><div class=heatmaps>"
        ]
        for h in maps:
            vid = h["video_id"]
            frames = self.clip(vid)
            if frames is None or vid not in self.job.volumes:
                continue
            if synthetic and vid not in self.tubes:
                try:
                    self.tubes[vid] = video_actor_tube(s["dataset_root"], self.job.videos[vid], 0)
                except Exception:  # no ground truth beside this video
                    self.tubes[vid] = None
            figs = [
                f'<figure><img src="{self.save(frames, f"{self.vname(vid)}-clip")}" '
                f'alt="clip {esc(vid)}">'
                f"<figcaption>{esc(vid)}</figcaption></figure>"
            ]
            scores = {"TCAV (the paper's)": h["scores"]}
            if any(self.causal.get(cn) is not None for cn in h["concepts"] if cn):
                scores["causal"] = causal_scores(h["concepts"], self.causal)
            for name, values in scores.items():
                imp = importance_map(self.job.volumes[vid], h["supervoxel_ids"], values)
                vmax = float(np.abs(imp).max())
                src = self.save(
                    heat_frames(frames, imp, vmax, self.tubes.get(vid)),
                    f"{slug(layer)}/{self.vname(vid)}-{slug(name.split()[0])}",
                )
                figs.append(
                    f'<figure><img src="{src}" alt="{esc(name)} voxel importance of {esc(vid)}">'
                    f"<figcaption>{esc(name)}, max |score| {fmt(vmax)}</figcaption></figure>"
                )
            out.append(f'<div class="heatrow">{"".join(figs)}</div>')
        return "".join(out) + "</div>"


def layer_summary(
    layer: str,
    rows: list[dict[str, Any]],
    by_causal: list[dict[str, Any]],
    ev: dict[str, Any],
    aucs: dict,
    the_lead: Lead,
) -> dict[str, Any]:
    """The layer's row of the index's overview table."""
    gap = {
        w: (
            ev.get(f"crossfit_causal_deletion_{w}auc_gap"),
            [ev[f"crossfit_causal_deletion_{w}auc_gap_ci95.{i}"] for i in (0, 1)]
            if f"crossfit_causal_deletion_{w}auc_gap_ci95.0" in ev
            else None,
        )
        for w in ("", "prob_")
    }
    return {
        "layer": layer,
        "concepts": len(rows),
        "significant": sum(r["significant"] for r in rows),
        "spearman": ev.get("spearman_tcav_causal"),
        "ranking": the_lead.ranking,
        "holds": the_lead.holds,
        "lead": [r["concept"] for r in the_lead.concepts],
        "top_tcav": rows[0]["concept"] if rows else None,
        "top_causal": by_causal[0]["concept"] if by_causal else None,
        "stability": mean_of([r.get("stability") for r in rows]),  # the discovered concepts' (a user's has none)
        "crossfit_top1": ev.get("crossfit_causal_top1_deletion_accuracy_drop_vs_random"),
        "crossfit_gap": gap,
        "top1": (
            ev.get("causal_top1_deletion_accuracy_drop_vs_random"),
            ev.get("tcav_top1_deletion_accuracy_drop_vs_random"),
            ev.get("best_single_concept_top1_deletion_accuracy_drop_vs_random"),
        ),
        "empty": ev.get("mean_filled_clip_accuracy"),
        "del_top": aucs.get(("causal", "delete", "top"), {}).get("accuracy"),
        "del_bottom": aucs.get(("causal", "delete", "bottom"), {}).get("accuracy"),
    }


def layer_notes(rows: list[dict[str, Any]], summary: dict[str, Any], ev: dict[str, Any],
                saturated: int, by: str) -> str:
    """What a layer's diagnostics say before its cards: a saturated TCAV, the counts and the
    rank correlation, a class the model keeps on mean-filled clips, the ground-truth figures."""
    parts = []
    if saturated:
        instead = "; the cards follow causal importance instead (report.rank_by)"
        parts.append(f'<p class="warn">TCAV is saturated here: {saturated} of {len(rows)} concepts '
                     "score exactly 0 or 1 and tie, so their TCAV ranking says little"
                     + (instead if by == "causal" else "") + ".</p>")
    rho, empty = summary["spearman"], summary["empty"] or 0
    rho_words = f"; Spearman correlation of the TCAV and causal rankings: <b>{fmt(rho)}</b>"
    empty_words = (f' <span class="warn">the model predicts this class for {fmt(empty)} of its '
                   "wholly mean-filled clips: deleting concepts can hardly take the class away, so "
                   "the deletion curves say little</span>")
    parts.append(f'<p class="meta">{len(rows)} concepts, {summary["significant"]} significant'
                 + (rho_words if rho is not None else "")
                 + (empty_words if empty >= 0.5 else "") + "</p>")
    if "pointing_game_random" in ev:
        parts.append(
            '<p class="meta">On the actor (ground truth), the scoring videos\' voxel maps: '
            f"pointing game TCAV <b>{fmt(ev['pointing_game_tcav'])}</b>, causal "
            f"<b>{fmt(ev['pointing_game_causal'])}</b>, a random map "
            f"{fmt(ev['pointing_game_random'])}; IoU of the top-q% voxels with the actor tube "
            f"(q its share of the clip) TCAV <b>{fmt(ev['top_share_iou_tcav'])}</b>, causal "
            f"<b>{fmt(ev['top_share_iou_causal'])}</b>, random "
            f"{fmt(ev['top_share_iou_random'])}</p>")
    return "".join(parts)


def layer_cards(rows: list[dict[str, Any]], rank_by: str) -> tuple[list, str, list, int]:
    """A layer's cards in the order they are shown, what orders them (`tcav` or `causal`), the
    concepts by causal importance (those that have one), and how many tie at a saturated TCAV."""
    rows = sorted(rows, key=lambda r: r["rank"])
    by_causal = sorted((r for r in rows if not missing(r.get("causal_importance"))),
                       key=lambda r: -r["causal_importance"])
    saturated = saturated_tcav(rows)
    cards, by = card_order(rows, by_causal, rank_by, saturated)
    return cards, by, by_causal, saturated


def diagnostics(sec: _Section, layer: str, rows: list[dict[str, Any]], ordered: tuple,
                summary: dict[str, Any], ev: dict[str, Any], aucs: dict, curve_rows: list) -> str:
    """A layer's diagnostics: its figures, every concept's card, the curves, the heat maps.
    `ordered`: `layer_cards(rows, report.rank_by)`."""
    job, rep, lslug = sec.job, sec.rep, slug(layer)
    cards, by, by_causal, saturated = ordered
    causal_rank = {r["concept"]: i + 1 for i, r in enumerate(by_causal)}
    most = int(rep["max_concepts"])
    more = (f'<p class="meta">{len(rows) - most} more concepts in concepts.parquet '
            "(report.max_concepts)</p>" if len(rows) > most else "")
    return (f'<section class="layer" id="class-{job.index}-{esc(lslug)}"><h3>'
            f"{esc(job.target_class)} &middot; layer <code>{esc(layer)}</code>: diagnostics</h3>"
            + layer_notes(rows, summary, ev, saturated, by)
            + '<div class="cards">'
            + "".join(sec.card(r, lslug, causal_rank) for r in cards[:most]) + more + "</div>"
            + sec.curves(layer, curve_rows, aucs, bool(rows)) + sec.heatmaps(layer) + "</section>")


def mean_of(values: list[Optional[float]]) -> Optional[float]:
    """The mean of the values that are there (None when none is)."""
    there = [v for v in values if v is not None]
    return float(np.mean(there)) if there else None


def render_class(job: ClassJob) -> ClassSection:
    """A class's section of the report and its images (returned, not written): per layer the
    lead first, then the diagnostics."""
    sec = _Section(job)
    parts = [f'<section class="class" id="class-{job.index}"><h2>{esc(job.target_class)}</h2>']
    layers = list(dict.fromkeys([*job.info.get("layers", {}), *(r["layer"] for r in job.concepts)]))
    accuracy = job.info.get(
        "scoring_accuracy", job.concepts[0]["class_accuracy"] if job.concepts else None
    )
    recognised = job.info.get(
        "recognised", job.concepts[0]["class_recognised"] if job.concepts else True
    )
    if accuracy is not None:
        parts.append(
            f'<p class="meta">model accuracy on the class\'s scoring videos: <b>{fmt(accuracy)}</b>'
            + (
                ""
                if recognised
                else ' <span class="warn">not significantly above chance: read its concepts with '
                "care</span>"
            )
            + "</p>"
        )
    if not job.concepts:
        parts.append('<p class="meta">no concept was accepted for this class at any layer</p>')
    summary, leads, details = [], [], []
    for layer in layers:
        rows = sorted((r for r in job.concepts if r["layer"] == layer), key=lambda r: r["rank"])
        ordered = layer_cards(rows, job.settings["report"].get("rank_by", "auto"))
        by_causal = ordered[2]
        curve_rows = [r for r in job.curves if r["layer"] == layer]
        aucs = {(r["ranking"], r["mode"], r["order"]): r for r in curve_rows if r["kind"] == "auc"}
        ev = job.evaluated.get(layer, {})
        the_lead = lead(rows, ev, job.settings["report"].get("rank_by", "auto"))
        summary.append(layer_summary(layer, rows, by_causal, ev, aucs, the_lead))
        if rows:
            leads.append(sec.answer(layer, the_lead, len(rows)))
        details.append(diagnostics(sec, layer, rows, ordered, summary[-1], ev, aucs, curve_rows))
    parts += leads + details + ["</section>"]
    return ClassSection(job.index, job.target_class, "\n".join(parts), sec.files, summary)
