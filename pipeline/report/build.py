"""The run's report a person reads: `report/index.html` under the run folder.

Made by the job's `report` stage and by `python -m pipeline.report run_dir=<run folder>
[report.exemplars=3 ...]`. Per class, the concepts of every explained layer in rank order as
cards (TCAV mean +- std, p-value, significance, causal importance, and a few looping exemplar
clips with the supervoxel outlined on its source clip), the deletion/insertion curves, and the
voxel-importance heat maps of a few scoring videos. Static HTML and image files with relative
links: it opens from disk, with no server, no script and no network.

Rendering is a pure function per class (`render_class`); the stage fans the classes out over
Ray tasks, each reading its class's partitions and writing its images and its section (in its
marker), and writes index.html from the sections.
"""


from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import pyarrow.compute as pc

from pipeline import io, schemas
from pipeline.orchestration.fanout import map_tasks
from pipeline.orchestration.runtime import Progress
from pipeline.report.atlas_page import atlas_unit
from pipeline.report.page import index_html
from pipeline.report.render import ClassJob, ClassSection, render_class
from pipeline.run_folder import (ATLAS_MANIFEST, CONCEPT_MEMBERS, CONCEPT_METRICS, CONCEPTS, EVALUATE_METRICS,
                                 EVALUATION, REPORT, REPORT_ATLAS, REPORT_INDEX, VOXEL_IMPORTANCE, RunFolder,
                                 RunFolderError, partition, unit_key)
from pipeline.segmentation.supervoxels import supervoxel_mask

FAILED_SHOWN = 500  # failed videos listed on the page (a corpus of junk files would make it huge)


def class_job(folder: RunFolder, index: int, target_class: str, settings: dict[str, Any], info: dict[str, Any],
              evaluated: dict[str, Any], concepts: list[dict[str, Any]]) -> ClassJob:
    """Everything one class's section needs, read from the class's own partitions (its members,
    its scoring videos' voxel importance, its curves) and one row group per video it shows."""
    rep = settings["report"]
    members = _class_rows(folder, CONCEPT_MEMBERS, target_class)
    most = int(rep["max_concepts"])
    shown = [r["concept"] for layer in dict.fromkeys(r["layer"] for r in concepts)
             for r in sorted((x for x in concepts if x["layer"] == layer), key=lambda x: x["rank"])[:most]]
    by_concept: dict[str, list[dict[str, Any]]] = {}
    for m in sorted(members, key=lambda m: m["distance"]):
        by_concept.setdefault(m["concept"], []).append(m)
    exemplars = {cn: pick_exemplars(by_concept.get(cn, []), int(rep["exemplars"])) for cn in shown}
    vi = _class_rows(folder, VOXEL_IMPORTANCE, target_class)  # the class's own scoring videos
    heat_vids = sorted({r["video_id"] for r in vi})[: int(rep["heatmap_videos"])]
    heatmaps = [r for r in vi if r["video_id"] in heat_vids]
    wanted = sorted({m["video_id"] for ms in exemplars.values() for m in ms} | set(heat_vids))
    volumes = folder.label_volumes(wanted)
    masks = {(m["video_id"], int(m["supervoxel_id"])): supervoxel_mask(volumes[m["video_id"]], m["supervoxel_id"])
             for ms in exemplars.values() for m in ms if m["video_id"] in volumes}
    return ClassJob(index=index, target_class=target_class, settings=settings, info=info, evaluated=evaluated,
                    concepts=concepts, exemplars=exemplars, masks=masks, heatmaps=heatmaps,
                    volumes={v: volumes[v] for v in heat_vids if v in volumes},
                    curves=_class_rows(folder, EVALUATION, target_class),
                    videos={r["video_id"]: r for r in folder.video_rows(wanted)})


def _class_rows(folder: RunFolder, dataset: str, target_class: str) -> list[dict[str, Any]]:
    """A dataset's rows of one class (its class=<k> partition; none when it has no partition)."""
    files = io.part_files(folder.path(dataset, partition(target_class=target_class)))
    return io.read_files(files).to_pylist() if files else []


def render_unit(folder: RunFolder, index: int, target_class: str, settings: dict[str, Any], info: dict[str, Any],
                evaluated: dict[str, Any], concepts: list[dict[str, Any]], fingerprint: str) -> dict[str, Any]:
    """One class of the report (in a Ray task): read its rows, render it, write its images and
    its marker (holding the section's HTML); returns the section's record."""
    section = render_class(class_job(folder, index, target_class, settings, info, evaluated, concepts))
    for rel, data in section.files.items():
        folder.write_bytes(f"{REPORT}/{rel}", data)
    record = {"class": target_class, "index": index, "html": section.html, "summary": section.summary,
              "files": len(section.files)}
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


def build_report(folder: RunFolder, c: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """Write report/index.html and its images (report/assets/); returns counts for run.json.
    One Ray task per class reads that class's rows, renders it and writes its images; a rerun
    over the same results with the same report settings reuses the classes already rendered.
    The figures shown come from the run's tables (concepts.parquet and its view, metrics/,
    evaluation/, the atlas's); `record` (the run record) gives the page's header only: the
    run's command, settings, timings and counts."""
    t0 = time.monotonic()
    if not folder.exists(CONCEPTS):
        raise RunFolderError(f"the report needs {CONCEPTS} in {folder.root}: run the concepts stage first")
    concepts = folder.concept_view([c for c in schemas.CONCEPT_VIEW.names if c != "centroid"]).to_pylist()
    class_info = {k: {**figures.get(None, {}), "layers": {lay: f for lay, f in figures.items() if lay is not None}}
                  for k, figures in folder.metrics(CONCEPT_METRICS).items()}
    evaluated = folder.metrics(EVALUATE_METRICS)
    classes = list(dict.fromkeys([*class_info, *(r["target_class"] for r in concepts)]))
    by_class: dict[str, list[dict[str, Any]]] = {}
    for r in concepts:
        by_class.setdefault(r["target_class"], []).append(r)
    settings = {"report": c["report"], "clip": c["clip"], "dataset_kind": c["dataset"]["kind"],
                "dataset_root": c["dataset"]["root"]}
    fingerprint = report_fingerprint(settings, concepts, class_info, evaluated, classes)
    done = folder.done_units("report", [], fingerprint, "report", stale="discard")
    sections = {r["class"]: r for r in map(json.loads, done.column("record").to_pylist())}
    if not sections:  # images of an earlier report (other settings, other concepts) go
        folder.clear(f"{REPORT}/assets")
    todo = [(i, k) for i, k in enumerate(classes) if k not in sections]
    items = ((k, (folder, i, k, settings, class_info.get(k, {}), evaluated.get(k, {}), by_class.get(k, []),
                  fingerprint)) for i, k in todo)
    for out in map_tasks(render_unit, items, progress=Progress("report", len(todo), unit="classes"),
                         on_error="report: class"):
        sections[out.key] = out.value
    shown = [ClassSection(index=r["index"], target_class=r["class"], html=r["html"], files={}, summary=r["summary"])
             for r in sorted(sections.values(), key=lambda r: r["index"])]
    atlas = None
    if folder.exists(ATLAS_MANIFEST):  # the atlas page: one task, remade with the report
        for out in map_tasks(atlas_unit, [("atlas page", (folder, settings))], progress=None,
                             on_error="report: the"):
            atlas = out.value
    videos = folder.read_videos(["video_id", "status", "failed_stage", "error"])
    failed = videos.filter(pc.equal(videos.column("status"), schemas.FAILED))
    page = index_html(folder.root, c, record, shown, failed.slice(0, FAILED_SHOWN).to_pylist(), videos.num_rows,
                      atlas=atlas is not None, n_failed=failed.num_rows)
    folder.write_bytes(REPORT_INDEX, page.encode())
    return {"wall_s": round(time.monotonic() - t0, 3), "classes": len(shown),
            "classes_skipped_done": len(classes) - len(todo), "assets": sum(r["files"] for r in sections.values()),
            "path": folder.path(REPORT_INDEX), **({"atlas_page": folder.path(REPORT_ATLAS)} if atlas else {})}


def report_fingerprint(settings: dict[str, Any], concepts: list[dict[str, Any]], class_info: dict[str, Any],
                       evaluated: dict[str, Any], classes: list[str]) -> str:
    """What the report's sections depend on: its settings and the run's results."""
    digest = hashlib.sha256(json.dumps([settings, concepts, class_info, evaluated, classes], sort_keys=True,
                                       default=str).encode()).hexdigest()
    return digest[:32]
