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

import time
from typing import Any, Iterator, Optional

from pipeline import io
from pipeline.orchestration.fanout import map_tasks
from pipeline.orchestration.runtime import Progress
from pipeline.report.page import index_html
from pipeline.report.render import ClassJob, render_class
from pipeline.run_folder import (CONCEPT_MEMBERS, CONCEPTS, EVALUATION, REPORT, REPORT_INDEX, RUN_JSON,
                                 VOXEL_IMPORTANCE, RunFolder, RunFolderError)
from pipeline.segmentation.supervoxels import supervoxel_mask



def plan_jobs(folder: RunFolder, c: dict[str, Any], record: dict[str, Any],
              video_rows: list[dict[str, Any]]) -> tuple[int, Iterator[ClassJob]]:
    """The number of classes and a job per class, made lazily (each class's label volumes are
    read when its job is made, so the driver holds one class's at a time). The classes are the
    concepts stage's (with or without concepts), else those in concepts.parquet."""
    if not folder.exists(CONCEPTS):
        raise RunFolderError(f"the report needs {CONCEPTS} in {folder.root}: run the concepts stage first")
    rep = c["report"]
    concepts = folder.read(CONCEPTS).to_pylist()
    members = folder.read(CONCEPT_MEMBERS).to_pylist()
    videos = {r["video_id"]: r for r in video_rows}
    vi: dict[str, list[dict[str, Any]]] = {}
    if folder.exists(VOXEL_IMPORTANCE):
        for r in folder.read(VOXEL_IMPORTANCE).to_pylist():
            if videos.get(r["video_id"], {}).get("label") == r["target_class"]:  # a class's own scoring videos
                vi.setdefault(r["target_class"], []).append(r)
    curves: dict[str, list[dict[str, Any]]] = {}
    if folder.exists(EVALUATION):
        for r in folder.read(EVALUATION).to_pylist():
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
            volumes = folder.label_volumes(wanted)
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


def build_report(folder: RunFolder, c: dict[str, Any], record: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Write report/index.html and its images (report/assets/, emptied first); returns counts
    for run.json. `render_class` runs over the classes in Ray tasks; the images come back and
    are written here."""
    t0 = time.monotonic()
    if record is None:
        record = io.read_json(folder.path(RUN_JSON)) if folder.exists(RUN_JSON) else {}
    video_rows = folder.read_videos()
    n, jobs = plan_jobs(folder, c, record, video_rows)
    assets = folder.path(REPORT, "assets")
    if io.exists(assets):  # images of an earlier report (another format, other concepts) go
        fs, path = io.resolve(assets)
        fs.delete_dir_contents(path)
    sections, files = [], 0
    for out in map_tasks(render_class, ((job.target_class, (job,)) for job in jobs),
                         progress=Progress("report", n, unit="classes")):
        if not out.ok:
            raise RuntimeError(f"report: class {out.key!r}: {out.error}")
        section = out.value
        for rel, data in section.files.items():
            folder.write_bytes(f"{REPORT}/{rel}", data)
        files += len(section.files)
        section.files = {}
        sections.append(section)
    sections.sort(key=lambda s: s.index)
    page = index_html(folder.root, c, record, sections, video_rows)
    folder.write_bytes(REPORT_INDEX, page.encode())
    return {"wall_s": round(time.monotonic() - t0, 3), "classes": len(sections), "assets": files,
            "path": folder.path(REPORT_INDEX)}
