"""The report's atlas page, report/atlas.html: per layer, the class x global-concept heat map,
then the largest, the most shared and the most class-specific global concepts as cards, each
with exemplar clips from several classes (a class's member nearest the centroid), and on the
synthetic corpus where each class's actor concept falls. Written by one Ray task of the report
stage (`atlas_unit`), which reads atlas/ and the clips it shows."""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Optional

import numpy as np

from pipeline.report.images import encode_animation, exemplar_frames, share_heatmap_png
from pipeline.report.render import clip_reader, esc, fmt, slug
from pipeline.run_folder import (ATLAS_CLASS_CONCEPTS, ATLAS_CONCEPTS, ATLAS_MANIFEST, REPORT,
                                 REPORT_ATLAS as ATLAS_PAGE, RunFolder)

log = logging.getLogger("pipeline")

ASSETS = "atlas_assets"  # under report/, remade with the page (the classes' images are in assets/)
CARDS = 6  # global concepts per list (largest, most shared, most class-specific)
HEATMAP_CONCEPTS = 60  # the largest global concepts in the heat map
HEATMAP_CLASSES = 60


def exemplar_asset(layer: str, video_id: str, supervoxel_id: int, ext: str) -> str:
    """An exemplar's file: the readable tail of the video's id and a digest of it (ids alike
    once slugged, or with one long tail, never share a file)."""
    digest = hashlib.sha256(video_id.encode()).hexdigest()[:8]
    return f"{ASSETS}/{slug(layer)}/{slug(video_id)[-40:]}-{digest}-{supervoxel_id}.{ext}"


def choose(concepts: list[dict[str, Any]], n: int = CARDS) -> dict[str, list[dict[str, Any]]]:
    """A layer's lists of global concepts: the largest; the most shared (highest class entropy);
    the most class-specific (the highest share of one class, among concepts at least half the
    median size, so that a handful of vectors does not count as specific)."""
    live = [c for c in concepts if c["size"]]
    if not live:
        return {"largest": [], "shared": [], "specific": []}
    floor = 0.5 * float(np.median([c["size"] for c in live]))
    sizeable = [c for c in live if c["size"] >= floor]
    return {"largest": sorted(live, key=lambda c: (-c["size"], c["global_concept"]))[:n],
            "shared": sorted(sizeable, key=lambda c: (-c["class_entropy"], -c["size"]))[:n],
            "specific": sorted(sizeable, key=lambda c: (-c["top_class_share"], -c["size"]))[:n]}


def exemplars_of(concept: dict[str, Any], cells: dict[tuple[int, str], dict[str, Any]], n: int) -> list[dict]:
    """Up to n exemplars from as many classes as possible: each class's nearest member, classes
    in order of their share of the concept."""
    out = []
    for k in concept["classes"][:n]:
        cell = cells.get((concept["global_concept"], k))
        if cell and cell["exemplar_video_ids"]:
            out.append({"target_class": k, "video_id": cell["exemplar_video_ids"][0],
                        "supervoxel_id": int(cell["exemplar_supervoxel_ids"][0])})
    return out


def atlas_unit(folder: RunFolder, settings: dict[str, Any]) -> dict[str, Any]:
    """Read the atlas, render its page and images, write them (in a Ray task); returns counts."""
    from pipeline import io
    from pipeline.atlas.build import actor_placements
    from pipeline.segmentation.supervoxels import supervoxel_mask

    manifest = io.read_json(folder.path(ATLAS_MANIFEST))
    concepts = folder.read(ATLAS_CONCEPTS).drop_columns(["centroid"]).to_pylist()
    actor = actor_placements(folder.actor_concepts(), folder.concept_links(), concepts)
    cells_all = folder.read(ATLAS_CLASS_CONCEPTS).to_pylist()
    rep, ext = settings["report"], settings["report"]["format"]
    n_ex = max(1, int(rep["exemplars"]))
    plan: dict[str, dict[str, Any]] = {}
    wanted: set[str] = set()
    for layer in manifest["layers"]:
        mine = [c for c in concepts if c["layer"] == layer]
        cells = {(r["global_concept"], r["target_class"]): r for r in cells_all if r["layer"] == layer}
        lists = choose(mine)
        ex = {c["global_concept"]: exemplars_of(c, cells, n_ex) for cs in lists.values() for c in cs}
        wanted |= {e["video_id"] for es in ex.values() for e in es}
        plan[layer] = {"concepts": mine, "cells": cells, "lists": lists, "exemplars": ex}
    volumes = folder.label_volumes(sorted(wanted)) if wanted else {}
    clip = clip_reader({r["video_id"]: r for r in folder.video_rows(sorted(wanted))}, settings["clip"])
    files: dict[str, bytes] = {}

    def figure(layer: str, e: dict[str, Any]) -> str:
        vid, sid = e["video_id"], e["supervoxel_id"]
        frames = clip(vid)
        if frames is None or vid not in volumes:
            return f'<figure class="missing"><figcaption>{esc(vid)}: clip unavailable</figcaption></figure>'
        mask = supervoxel_mask(volumes[vid], sid)
        rel = exemplar_asset(layer, vid, sid, ext)
        if rel not in files:
            files[rel] = encode_animation(exemplar_frames(frames, mask), ext, int(rep["frame_ms"]))
        return (f'<figure><img src="{esc(rel)}" alt="{esc(e["target_class"])}: {esc(vid)}" loading="lazy">'
                f'<figcaption>{esc(e["target_class"])}<br>{esc(vid)}</figcaption></figure>')

    sections = []
    for layer, p in plan.items():
        info = manifest["layers"][layer]
        live = [c for c in p["concepts"] if c["size"]]
        heat = heatmap(layer, live, p["cells"])
        if heat is not None:
            files[f"{ASSETS}/{slug(layer)}/classes-by-concepts.png"] = heat
        html = [f'<section class="layer" id="atlas-{esc(slug(layer))}"><h2>layer <code>{esc(layer)}</code></h2>',
                f'<p class="meta">{info["k"]} global concepts over {info["ntotal"]} supervoxel vectors of '
                f'{len(info["partitions"])} classes (FAISS k-means; {esc(info["index"])} index, nprobe '
                f'{info["nprobe"]}); {sum(1 for c in live if c["num_classes"] == 1)} of them occur in one class only; '
                f'mean class entropy {fmt(float(np.mean([c["class_entropy"] for c in live])) if live else None)} '
                f'bits.</p>']
        if heat is not None:
            html.append(f'<img class="plot" src="{ASSETS}/{esc(slug(layer))}/classes-by-concepts.png" '
                        f'alt="classes by global concepts at {esc(layer)}">')
        actors = {k: v[layer] for k, v in actor.items() if layer in v}
        if actors:
            html.append("<h3>Where each class's actor concept falls</h3><table><caption>other classes' share: over "
                        "the actor concept's members, the mean share of other classes among the members of the "
                        "global concept each falls in</caption><tr><th>class</th><th>actor concept"
                        "</th><th>its largest global concepts (share of its members): their classes</th>"
                        "<th>other classes' share</th></tr>" + "".join(
                            f'<tr><td>{esc(k)}</td><td>{esc(a["actor_concept"].rsplit("/", 1)[-1])}</td><td>'
                            + "<br>".join(f'#{g["global_concept"]} ({fmt(g["share"])}): '
                                          + ", ".join(f"{esc(c)} {fmt(s)}" for c, s in g["classes"].items())
                                          for g in a["global_concepts"])
                            + f'</td><td>{fmt(a["other_classes_share"])}</td></tr>'
                            for k, a in sorted(actors.items())) + "</table>")
        titles = {"largest": "Largest", "shared": "Most shared across classes",
                  "specific": "Most class-specific"}
        for key, title in titles.items():
            html.append(f'<h3>{title}</h3><div class="cards">')
            for c in p["lists"][key]:
                shares = ", ".join(f"{esc(k)} {fmt(s)}" for k, s in list(zip(c["classes"], c["class_shares"]))[:5])
                more = f" and {c['num_classes'] - 5} more" if c["num_classes"] > 5 else ""
                figs = "".join(figure(layer, e) for e in p["exemplars"][c["global_concept"]])
                html.append(f'<article class="card"><header><b>global concept #{c["global_concept"]}</b></header>'
                            f'<dl><dt>size</dt><dd>{c["size"]} supervoxels, {c["num_videos"]} videos</dd>'
                            f'<dt>classes</dt><dd>{c["num_classes"]}: {shares}{more}</dd>'
                            f'<dt>class entropy</dt><dd>{fmt(c["class_entropy"])} bits</dd></dl>'
                            f'<div class="exemplars">{figs}</div></article>')
            html.append("</div>")
        html.append("</section>")
        sections.append((layer, "".join(html)))
    folder.clear(f"{REPORT}/{ASSETS}")  # an earlier page's images (other settings) go
    for rel, data in files.items():
        folder.write_bytes(f"{REPORT}/{rel}", data)
    folder.write_bytes(ATLAS_PAGE, page(sections).encode())
    return {"layers": len(plan), "files": len(files)}


def heatmap(layer: str, live: list[dict[str, Any]], cells: dict[tuple[int, str], dict[str, Any]]) -> Optional[bytes]:
    """The class x global-concept shares (of each class's vectors) for the largest concepts."""
    top = sorted(live, key=lambda c: (-c["size"], c["global_concept"]))[:HEATMAP_CONCEPTS]
    classes = sorted({k for (_, k) in cells})[:HEATMAP_CLASSES]
    if not top or not classes:
        return None
    matrix = np.zeros((len(classes), len(top)))
    for j, c in enumerate(top):
        for i, k in enumerate(classes):
            cell = cells.get((c["global_concept"], k))
            matrix[i, j] = cell["share_of_class"] if cell else 0.0
    return share_heatmap_png(matrix, classes, [str(c["global_concept"]) for c in top],
                             f"{layer}: share of each class's supervoxels in the {len(top)} largest global concepts")


def page(sections: list[tuple[str, str]]) -> str:
    """The atlas page from its layers' sections."""
    from pipeline.report.page import CSS

    nav = " ".join(f'<a href="#atlas-{esc(slug(layer))}">{esc(layer)}</a>' for layer, _ in sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>3D ACE report: global concept atlas</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body><header class="top"><h1>Global concept atlas</h1>
<p>Concepts shared across classes: per layer, FAISS k-means over every kept supervoxel of the corpus</p></header>
<main><nav><a href="index.html">&larr; the report</a> &middot; layers: {nav}</nav>
<p class="meta">A global concept is a cluster of supervoxel vectors from every class. Its class entropy is that of
the classes its members come from (0 bits: one class only; log2 of the number of classes: evenly shared). Each
card's clips are, for the classes holding most of it, that class's member nearest the centroid. The tables are
atlas/concepts.parquet, atlas/class_concepts.parquet and atlas/concept_links/; search them with
<code>python -m pipeline.atlas query</code>.</p>
{"".join(html for _, html in sections)}
</main></body></html>
"""
