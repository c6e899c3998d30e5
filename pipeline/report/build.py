"""The run's report a person reads: `report/index.html` under the run folder.

Made by the job's `report` stage and by `ace3d report run_dir=<run folder>
[report.exemplars=3 ...]`. Per class and layer, first the ranking of the concepts that holds
under deletion and the concepts that matter by it, with their clips; then every concept as a
card (TCAV mean +- std, p-value, significance, causal importance, and a few looping exemplar
clips with the supervoxel outlined on its source clip), the deletion/insertion curves, and the
voxel-importance heat maps of a few scoring videos. Static HTML and image files with relative
links: it opens from disk, with no server, no script and no network.

Rendering is a pure function per class (`pipeline.report.section.render_class`); `render_unit`
reads a class's partitions, renders it and writes its images and its section (in its marker),
or, past `report.class_pages` classes, its own page; the report stage
(`pipeline.stages.report.build_report`) fans the classes out over Ray tasks and writes
index.html.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pipeline import io
from pipeline.report.render import ClassJob
from pipeline.report.lead import lead
from pipeline.report.section import layer_cards, render_class
from pipeline.report.page import class_file, class_page
from pipeline.run_folder import (
    CONCEPT_MEMBERS,
    EVALUATION,
    REPORT,
    REPORT_CLASSES,
    VOXEL_IMPORTANCE,
    RunFolder,
    partition,
    unit_key,
)
from pipeline.segmentation.supervoxels import supervoxel_mask


def class_job(folder: RunFolder, index: int, target_class: str, settings: dict[str, Any],
              info: dict[str, Any], evaluated: dict[str, Any],
              concepts: list[dict[str, Any]]) -> ClassJob:
    """Everything one class's section needs, read from the class's own partitions (its members,
    its scoring videos' voxel importance, its curves) and one row group per video it shows."""
    rep = settings["report"]
    members = class_rows(folder, CONCEPT_MEMBERS, target_class)
    most = int(rep["max_concepts"])
    by_layer: dict[str, list[dict[str, Any]]] = {}
    for r in concepts:
        by_layer.setdefault(r["layer"], []).append(r)
    rank_by = rep.get("rank_by", "auto")
    shown = set()  # the concepts of the cards shown and of the lead
    for layer, rows in by_layer.items():
        the_lead = lead(rows, evaluated.get(layer, {}), rank_by)
        shown |= {r["concept"] for r in layer_cards(rows, rank_by)[0][:most] + the_lead.concepts}
    by_concept: dict[str, list[dict[str, Any]]] = {}
    for m in sorted(members, key=lambda m: m["distance"]):
        by_concept.setdefault(m["concept"], []).append(m)
    exemplars = {cn: pick_exemplars(by_concept.get(cn, []), int(rep["exemplars"])) for cn in shown}
    vi = class_rows(folder, VOXEL_IMPORTANCE, target_class)  # the class's own scoring videos
    heat_vids = sorted({r["video_id"] for r in vi})[: int(rep["heatmap_videos"])]
    heatmaps = [r for r in vi if r["video_id"] in heat_vids]
    wanted = sorted({m["video_id"] for ms in exemplars.values() for m in ms} | set(heat_vids))
    volumes = folder.label_volumes(wanted)
    masks = {
        (m["video_id"], int(m["supervoxel_id"])): supervoxel_mask(
            volumes[m["video_id"]], m["supervoxel_id"]
        )
        for ms in exemplars.values()
        for m in ms
        if m["video_id"] in volumes
    }
    return ClassJob(
        index=index,
        target_class=target_class,
        settings=settings,
        info=info,
        evaluated=evaluated,
        concepts=concepts,
        exemplars=exemplars,
        masks=masks,
        heatmaps=heatmaps,
        volumes={v: volumes[v] for v in heat_vids if v in volumes},
        curves=class_rows(folder, EVALUATION, target_class) if evaluated else [],
        videos={r["video_id"]: r for r in folder.video_rows(wanted)},
    )


def class_rows(folder: RunFolder, dataset: str, target_class: str) -> list[dict[str, Any]]:
    """A dataset's rows of one class (its class=<k> partition; none when it has no partition)."""
    files = io.part_files(folder.path(dataset, partition(target_class=target_class)))
    return io.read_files(files).to_pylist() if files else []


def render_unit(folder: RunFolder, index: int, target_class: str, settings: dict[str, Any],
                info: dict[str, Any], evaluated: dict[str, Any], concepts: list[dict[str, Any]],
                fingerprint: str) -> dict[str, Any]:
    """One class of the report (in a Ray task): read its rows, render it, write its images and
    its marker (holding the section's HTML); returns the section's record."""
    section = render_class(
        class_job(folder, index, target_class, settings, info, evaluated, concepts)
    )
    for rel, data in section.files.items():
        folder.write_bytes(f"{REPORT}/{rel}", data)
    html = section.html
    if settings["pages"]:  # its own page; the index links it
        page = class_page(
            html, target_class, settings["dataset_name"], settings["model_name"], settings["atlas"]
        )
        folder.write_bytes(f"{REPORT_CLASSES}/{class_file(index, target_class)}", page.encode())
        html = ""
    record = {
        "class": target_class,
        "index": index,
        "html": html,
        "summary": section.summary,
        "files": len(section.files),
    }
    folder.write_unit("report", unit_key(target_class), [], [{"record": record}], fingerprint)
    return record


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


def report_fingerprint(
    settings: dict[str, Any],
    concepts: list[dict[str, Any]],
    class_info: dict[str, Any],
    evaluated: dict[str, Any],
    classes: list[str],
) -> str:
    """What the report's sections depend on: its settings and the run's results."""
    digest = hashlib.sha256(
        json.dumps(
            [settings, concepts, class_info, evaluated, classes], sort_keys=True, default=str
        ).encode()
    ).hexdigest()
    return digest[:32]
