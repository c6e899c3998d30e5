"""The run's report a person reads: `report/index.html` under the run folder.

Made by the job's `report` stage and by `python -m pipeline.report run_dir=<run folder>
[report.exemplars=3 ...]`. Per class, the concepts of every explained layer in rank order as
cards (TCAV mean +- std, p-value, significance, causal importance, and a few looping exemplar
clips with the supervoxel outlined on its source clip), the deletion/insertion curves, and the
voxel-importance heat maps of a few scoring videos. Static HTML and image files with relative
links: it opens from disk, with no server, no script and no network.

Rendering is a pure function per class (`render_class`); the stage fans the classes out over
Ray tasks and writes index.html from their fragments.
"""

from __future__ import annotations

import html
import io as _io
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np

from pipeline import io, schemas

log = logging.getLogger("pipeline")

ORDER_STYLE = {  # (ranking, order) -> matplotlib style and legend label
    ("causal", "top"): ("#c0392b", "-", "causal order, most important first"),
    ("tcav", "top"): ("#e67e22", "--", "TCAV order (the paper's), most important first"),
    ("causal", "bottom"): ("#2471a3", "-", "causal order, least important first"),
    ("causal", "random"): ("#7f8c8d", ":", "random order (mean of the draws)"),
}


@dataclass
class ClassJob:
    """Everything `render_class` needs for one class; travels to a Ray task. The task reads
    only the source clips (as the model actors do); it reads and writes nothing in the run
    folder, so the folder may be a URI or on another node."""

    index: int
    target_class: str
    settings: dict[str, Any]  # report config, clip config, dataset kind and root
    info: dict[str, Any]  # the concepts stage's record of the class (run.json), or {}
    evaluated: dict[str, dict[str, Any]]  # the evaluate stage's record per layer (run.json), or {}
    concepts: list[dict[str, Any]]  # concepts.parquet rows of the class
    exemplars: dict[str, list[dict[str, Any]]]  # concept -> chosen concept_members rows
    masks: dict[tuple[str, int], np.ndarray]  # (video, supervoxel) of each exemplar -> bool [T, H, W]
    heatmaps: list[dict[str, Any]]  # voxel_importance rows of the class's own scoring videos
    volumes: dict[str, np.ndarray]  # label volumes of the heat-map videos
    curves: list[dict[str, Any]]  # evaluation.parquet rows of the class
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


# --- images -------------------------------------------------------------------------------


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


def heat_frames(frames: np.ndarray, importance: np.ndarray, vmax: float, tube: Optional[np.ndarray] = None) -> np.ndarray:
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
    if image_format == "webp":
        images[0].save(buf, format="WEBP", save_all=True, append_images=images[1:], duration=frame_ms, loop=0,
                       quality=80, method=4)
    else:
        images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
    return buf.getvalue()


def curves_png(rows: list[dict[str, Any]], title: str) -> Optional[bytes]:
    """Deletion and insertion curves (class accuracy and mean class probability against k)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


# --- one class ----------------------------------------------------------------------------


def render_class(job: ClassJob) -> ClassSection:
    """A class's section of the report and its images (returned, not written)."""
    from pipeline.data.video import ClipSpec, read_clip
    from pipeline.evaluation.ground_truth import video_actor_tube
    from pipeline.scoring.voxel_importance import causal_scores, importance_map

    s = job.settings
    rep, ext = s["report"], s["report"]["format"]
    spec = ClipSpec.from_config(s["clip"])
    base = f"assets/c{job.index:04d}-{slug(job.target_class)[:40]}"
    causal = {r["concept"]: r.get("causal_importance") for r in job.concepts}
    clips: dict[str, Optional[np.ndarray]] = {}
    tubes: dict[str, Optional[np.ndarray]] = {}  # the ground-truth actor, read once per video
    files: dict[str, bytes] = {}
    video_index: dict[str, int] = {}  # file names by index: two ids may slug alike

    def clip(vid: str) -> Optional[np.ndarray]:
        if vid not in clips:
            try:
                clips[vid] = read_clip(job.videos[vid]["path"], spec).frames
            except Exception as e:  # the source moved or broke since the run: the card says so
                log.warning("report: cannot read the clip of %s: %s", vid, e)
                clips[vid] = None
        return clips[vid]

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
        rho = job.evaluated.get(layer, {}).get("spearman_tcav_causal")
        summary.append({"layer": layer, "concepts": len(rows), "significant": sum(r["significant"] for r in rows),
                        "spearman": rho,
                        "top_tcav": rows[0]["concept"] if rows else None,
                        "top_causal": by_causal[0]["concept"] if by_causal else None,
                        "top1": (job.evaluated.get(layer, {}).get("causal_top1_deletion_accuracy_drop_vs_random"),
                                 job.evaluated.get(layer, {}).get("tcav_top1_deletion_accuracy_drop_vs_random"),
                                 job.evaluated.get(layer, {}).get(
                                     "best_single_concept_top1_deletion_accuracy_drop_vs_random")),
                        "empty": job.evaluated.get(layer, {}).get("mean_filled_clip_accuracy"),
                        "del_top": aucs.get(("causal", "delete", "top"), {}).get("accuracy"),
                        "del_bottom": aucs.get(("causal", "delete", "bottom"), {}).get("accuracy")})
        parts.append(f'<section class="layer" id="class-{job.index}-{esc(lslug)}"><h3>{esc(job.target_class)} '
                     f'&middot; layer <code>{esc(layer)}</code></h3>')
        parts.append(f'<p class="meta">{len(rows)} concepts, {summary[-1]["significant"]} significant'
                     + (f'; Spearman correlation of the TCAV and causal rankings: <b>{fmt(rho)}</b>' if rho is not None
                        else "")
                     + (f' <span class="warn">the model predicts this class for {fmt(summary[-1]["empty"])} of its '
                        'wholly mean-filled clips: deleting concepts can hardly take the class away, so the '
                        'deletion curves say little</span>' if (summary[-1]["empty"] or 0) >= 0.5 else "") + "</p>")
        # concept cards
        parts.append('<div class="cards">')
        for r in rows[: int(rep["max_concepts"])]:
            cname = r["concept"].rsplit("/", 1)[-1]
            figs = []
            for m in job.exemplars.get(r["concept"], []):
                vid, sid = m["video_id"], int(m["supervoxel_id"])
                frames = clip(vid)
                if frames is None or (vid, sid) not in job.masks:
                    figs.append(f'<figure class="missing"><figcaption>{esc(vid)}: clip unavailable</figcaption></figure>')
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
                f'<dt>causal importance</dt><dd>{fmt(r.get("causal_importance"), 3)}'
                + (f' (#{causal_rank[r["concept"]]})' if r["concept"] in causal_rank else "") + "</dd>"
                f'<dt>members</dt><dd>{r["size"]} from {r["num_videos"]} videos</dd>'
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


def auc_table(aucs: dict[tuple[str, str, str], dict[str, Any]]) -> str:
    if not aucs:
        return ""
    head = "<tr><th>ranking</th><th>curve</th><th>top</th><th>bottom</th><th>random</th></tr>"
    body = []
    for ranking in ("causal", "tcav"):
        for mode in ("delete", "insert"):
            cells = [fmt(aucs.get((ranking, mode, o), {}).get("accuracy")) for o in ("top", "bottom", "random")]
            body.append(f"<tr><td>{ranking}</td><td>{'deletion' if mode == 'delete' else 'insertion'}</td>"
                        + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ('<table class="auc"><caption>Area under the accuracy curves (k scaled to [0, 1]). Deletion: lower '
            "is better for the top-first order; insertion: higher.</caption>" + head + "".join(body) + "</table>")


# --- the whole report ---------------------------------------------------------------------


def plan_jobs(run_dir: str, c: dict[str, Any], record: dict[str, Any]) -> tuple[int, Iterator[ClassJob]]:
    """The number of classes and a job per class, made lazily (each class's label volumes are
    read when its job is made, so the driver holds one class's at a time). The classes are the
    concepts stage's (with or without concepts), else those in concepts.parquet."""
    from pipeline.run import RunFolderError
    from pipeline.segmentation.supervoxels import supervoxel_mask

    if not io.exists(io.join(run_dir, "concepts.parquet")):
        raise RunFolderError(f"the report needs concepts.parquet in {run_dir}: run the concepts stage first")
    rep = c["report"]
    concepts = io.read_table(io.join(run_dir, "concepts.parquet")).to_pylist()
    members = io.read_table(io.join(run_dir, "concept_members.parquet")).to_pylist()
    videos = {r["video_id"]: r for r in io.read_table(io.join(run_dir, "videos.parquet")).to_pylist()}
    vi: dict[str, list[dict[str, Any]]] = {}
    if io.exists(io.join(run_dir, "voxel_importance")):
        for r in io.read_parts(io.join(run_dir, "voxel_importance")).to_pylist():
            if videos.get(r["video_id"], {}).get("label") == r["target_class"]:  # a class's own scoring videos
                vi.setdefault(r["target_class"], []).append(r)
    curves: dict[str, list[dict[str, Any]]] = {}
    if io.exists(io.join(run_dir, "evaluation.parquet")):
        for r in io.read_table(io.join(run_dir, "evaluation.parquet")).to_pylist():
            curves.setdefault(r["target_class"], []).append(r)
    by_concept: dict[str, list[dict[str, Any]]] = {}
    for m in sorted(members, key=lambda m: m["distance"]):
        by_concept.setdefault(m["concept"], []).append(m)
    by_class: dict[str, list[dict[str, Any]]] = {}
    for r in concepts:
        by_class.setdefault(r["target_class"], []).append(r)
    stages = record.get("stages", {})
    class_info = (stages.get("concepts") or {}).get("classes") or {}
    evaluated = (stages.get("evaluate") or {}).get("classes") or {}
    classes = list(dict.fromkeys([*class_info, *(r["target_class"] for r in concepts)]))
    settings = {"report": rep, "clip": c["clip"], "dataset_kind": c["dataset"]["kind"],
                "dataset_root": c["dataset"]["root"]}

    def jobs() -> Iterator[ClassJob]:
        for i, k in enumerate(classes):
            rows = by_class.get(k, [])
            shown = [r["concept"] for layer in dict.fromkeys(r["layer"] for r in rows)
                     for r in sorted((x for x in rows if x["layer"] == layer),
                                     key=lambda x: x["rank"])[: int(rep["max_concepts"])]]
            exemplars = {cn: pick_exemplars(by_concept.get(cn, []), int(rep["exemplars"])) for cn in shown}
            heat_vids = sorted({r["video_id"] for r in vi.get(k, [])})[: int(rep["heatmap_videos"])]
            heatmaps = [r for r in vi.get(k, []) if r["video_id"] in heat_vids]
            wanted = sorted({m["video_id"] for ms in exemplars.values() for m in ms} | set(heat_vids))
            volumes = io.load_label_volumes(run_dir, wanted) if wanted else {}
            masks = {(m["video_id"], int(m["supervoxel_id"])):
                     supervoxel_mask(volumes[m["video_id"]], m["supervoxel_id"])
                     for ms in exemplars.values() for m in ms if m["video_id"] in volumes}
            yield ClassJob(index=i, target_class=k, settings=settings, info=class_info.get(k, {}),
                           evaluated=evaluated.get(k, {}), concepts=rows, exemplars=exemplars, masks=masks,
                           heatmaps=heatmaps, volumes={v: volumes[v] for v in heat_vids if v in volumes},
                           curves=curves.get(k, []), videos={v: videos[v] for v in wanted if v in videos})

    return len(classes), jobs()


def pick_exemplars(members: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The `n` members nearest the centroid (`members` sorted by distance), one per video while
    there are videos to spare."""
    if n <= 0:
        return []
    first = {}
    for m in members:
        first.setdefault(m["video_id"], m)
    chosen = list(first.values())[:n]
    chosen += [m for m in members if m not in chosen][: n - len(chosen)]
    return chosen


def build_report(run_dir: str, c: dict[str, Any], record: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Write report/index.html and its images (report/assets/, emptied first); returns counts
    for run.json. `render_class` runs over the classes in Ray tasks; the images come back and
    are written here."""
    from pipeline.orchestration.runtime import Progress, map_tasks

    t0 = time.monotonic()
    if record is None:
        record = io.read_json(io.join(run_dir, "run.json")) if io.exists(io.join(run_dir, "run.json")) else {}
    n, jobs = plan_jobs(run_dir, c, record)
    assets = io.join(run_dir, "report", "assets")
    if io.exists(assets):  # images of an earlier report (another format, other concepts) go
        fs, path = io.resolve(assets)
        fs.delete_dir_contents(path)
    sections, files = [], 0
    for section in map_tasks(render_class, jobs, stage="report", progress=Progress("report", n, unit="classes")):
        for rel, data in section.files.items():
            io.write_bytes(data, io.join(run_dir, "report", rel))
        files += len(section.files)
        section.files = {}
        sections.append(section)
    sections.sort(key=lambda s: s.index)
    videos = io.read_table(io.join(run_dir, "videos.parquet")).to_pylist()
    page = index_html(run_dir, c, record, sections, videos)
    io.write_bytes(page.encode(), io.join(run_dir, "report", "index.html"))
    return {"wall_s": round(time.monotonic() - t0, 3), "classes": len(sections), "assets": files,
            "path": io.join(run_dir, "report", "index.html")}


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1c2833;background:#f4f6f7}
header.top{background:#1c2833;color:#fff;padding:18px 28px}header.top h1{margin:0 0 4px;font-size:22px}
header.top p{margin:2px 0;color:#d5dbdb}main{padding:8px 28px 40px}nav a{margin-right:12px}
h2{border-bottom:2px solid #1c2833;padding-bottom:4px;margin-top:32px}h3{margin:22px 0 4px}
.meta{color:#566573;margin:4px 0}.warn{color:#b03a2e;font-weight:600}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #d5d8dc;border-radius:6px;padding:10px 12px;width:400px}
.card.sig{border-left:5px solid #1e8449}.rank{color:#566573}.badge{background:#1e8449;color:#fff;border-radius:3px;
padding:0 5px;font-size:11px;margin-left:6px}
dl{display:grid;grid-template-columns:auto 1fr;gap:1px 10px;margin:8px 0}dt{color:#566573}dd{margin:0}
.exemplars,.heatrow{display:flex;gap:8px;flex-wrap:wrap}figure{margin:0;text-align:center}
figure img{width:124px;height:124px;image-rendering:auto;border-radius:3px;background:#000}
.heatrow figure img{width:168px;height:168px}figcaption{font-size:11px;color:#566573;max-width:168px;
overflow-wrap:anywhere}.curves{display:flex;gap:16px;align-items:flex-start;flex-wrap:wrap}img.plot{max-width:100%;background:#fff;border:1px solid #d5d8dc}
table{border-collapse:collapse;background:#fff;margin:8px 0}table.auc{max-width:340px}td,th{border:1px solid #d5d8dc;padding:3px 8px;
text-align:right}th{background:#eaeded}td:first-child,th:first-child,td:nth-child(2){text-align:left}
caption{caption-side:bottom;font-size:12px;color:#566573;text-align:left;padding-top:4px}code{font-size:13px}
"""


def index_html(run_dir: str, c: dict[str, Any], record: dict[str, Any], sections: list[ClassSection],
               videos: list[dict[str, Any]]) -> str:
    failed = [v for v in videos if v["status"] == schemas.FAILED]
    model = c.get("model", {}).get("name", "?")
    dataset = c.get("dataset", {}).get("name", "?")
    overview = ["<table><tr><th>class</th><th>layer</th><th>concepts</th><th>significant</th>"
                "<th>TCAV top concept</th><th>causal top concept</th><th>Spearman TCAV/causal</th>"
                "<th>top-1 deletion: accuracy drop beyond a random concept's, causal (TCAV) order; the most any "
                "single concept gives</th>"
                "<th>deletion AUC, top-first causal order</th><th>deletion AUC, bottom-first causal order</th>"
                "<th>accuracy on wholly mean-filled clips</th></tr>"]
    for s in sections:
        for row in s.summary:
            top1 = (f"{fmt(row['top1'][0])} ({fmt(row['top1'][1])}); at most {fmt(row['top1'][2])}"
                    if row["top1"][0] is not None else "–")
            overview.append(
                f'<tr><td><a href="#class-{s.index}">{esc(s.target_class)}</a></td><td>{esc(row["layer"])}</td>'
                f'<td>{row["concepts"]}</td><td>{row["significant"]}</td>'
                f'<td>{esc((row["top_tcav"] or "–").rsplit("/", 1)[-1])}</td>'
                f'<td>{esc((row["top_causal"] or "–").rsplit("/", 1)[-1])}</td>'
                f'<td>{fmt(row["spearman"])}</td><td>{top1}</td>'
                f'<td>{fmt(row["del_top"])}</td><td>{fmt(row["del_bottom"])}</td>'
                + (f'<td class="warn">{fmt(row["empty"])}</td>' if (row["empty"] or 0) >= 0.5
                   else f'<td>{fmt(row["empty"])}</td>') + '</tr>')
    overview.append("</table>")
    stages = record.get("stages", {})
    timing = ", ".join(f"{esc(n)} {s.get('wall_s', 0):.0f} s" for n, s in stages.items() if isinstance(s, dict))
    fails = ""
    if failed:
        fails = ("<h2 id=failed>Failed videos</h2><table><tr><th>video</th><th>stage</th><th>reason</th></tr>"
                 + "".join(f"<tr><td>{esc(v['video_id'])}</td><td>{esc(v.get('failed_stage') or '')}</td>"
                           f"<td>{esc(v.get('error') or '')}</td></tr>" for v in failed) + "</table>")
    nav = " ".join(f'<a href="#class-{s.index}">{esc(s.target_class)}</a>' for s in sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>3D ACE report: {esc(dataset)} / {esc(model)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body><header class="top"><h1>3D ACE: spatio-temporal concepts of {esc(model)} on {esc(dataset)}</h1>
<p>{len(videos)} videos ({len(videos) - len(failed)} ok, {len(failed)} failed) &middot; {len(sections)} classes
&middot; run started {esc(record.get("started", "?"))} &middot; {timing}</p>
<p>run folder <code>{esc(run_dir)}</code></p></header>
<main><nav>classes: {nav}{' · <a href="#failed">failed videos</a>' if failed else ""}</nav>
<h2>Overview</h2>
<p class="meta">Concepts are ranked by mean TCAV score (the paper's ordering); causal importance is the mean drop in
class probability when the concept's voxels are mean-filled in the class's scoring videos. Each card's clips are the
members nearest the concept's centroid, the supervoxel outlined in yellow on its source clip, everything else
dimmed. Curves and tables are in evaluation.parquet; scores in concepts.parquet.</p>
{"".join(overview)}
{"".join(s.html for s in sections)}
{fails}
<p class="meta">Made by <code>python -m pipeline.report run_dir={esc(run_dir)}</code>.</p>
</main></body></html>
"""


# --- command line -------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """`python -m pipeline.report run_dir=<run folder> [report.<key>=<value> ...]`."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from pipeline.config import ConfigError, ReportConfig, validate_report
    from pipeline.orchestration.runtime import init_ray
    from pipeline.run import RunFolderError

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        bad = [a for a in argv if "=" not in a]
        if bad:
            raise ConfigError(f"arguments are key=value overrides, got {bad[0]!r} "
                              "(usage: python -m pipeline.report run_dir=<run folder> [report.exemplars=3 ...])")
        cli = OmegaConf.from_dotlist(argv)
        run_dir = cli.pop("run_dir", None)
        if not run_dir:
            raise ConfigError("config key 'run_dir' is missing: python -m pipeline.report run_dir=<run folder>")
        run_dir = str(run_dir) if io.is_uri(str(run_dir)) else os.path.abspath(str(run_dir))
        unknown = [k for k in cli if k != "report"]
        if unknown:
            raise ConfigError(f"config key {unknown[0]!r}: unknown; known: run_dir, report.*")

        def merged(*layers: Any) -> dict[str, Any]:
            try:
                return OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(ReportConfig), *layers))
            except OmegaConfBaseException as e:
                raise ConfigError(f"config key 'report.{e.key}': {e.msg.splitlines()[0]}" if getattr(e, "key", None)
                                  else f"report settings: {e}") from None

        overrides = cli.get("report") or {}
        validate_report(merged(overrides))  # a bad key fails before anything is read
        if not io.exists(io.join(run_dir, "run.json")):
            raise RunFolderError(f"{run_dir} is not a run folder (no run.json)")
        record = io.read_json(io.join(run_dir, "run.json"))
        c = record["config"]
        c["report"] = merged(c.get("report") or {}, overrides)
        init_ray({**c.get("ray", {}), "address": None})
        out = build_report(run_dir, c, record)
    except (ConfigError, RunFolderError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {out['path']} ({out['classes']} classes, {out['assets']} images, {out['wall_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
