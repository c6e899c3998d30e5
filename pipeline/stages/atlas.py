"""The atlas stage (after concepts): per explained layer, global concepts over every kept
supervoxel vector of every class (FAISS k-means, `pipeline.atlas.build`), each vector assigned
to one, and a FAISS search index over the same vectors whose inverted lists are those concepts.

Per layer, as units of work with markers in `_done/atlas/` (a rerun skips finished units; a
crash loses at most the units in flight):
1. train: tasks draw a uniform sample from the class partitions of activations/ (each its
   share, seeded), one task trains k-means on it and writes the trained, empty index
   (atlas/_train/<layer>/);
2. assign: one task per class partition reads its vectors, assigns each to its nearest global
   concept (atlas/assignments/<layer>/<class>/), counts the partition's members per concept
   (atlas/_counts/) and adds its vectors to a shard of the index (atlas/_shards/);
3. index: one task merges the layer's shards into atlas/index/<layer>.faiss.
Then per (class, layer) with concepts, a task links each concept of concepts.parquet to the
global concepts its members fall into (atlas/concept_links/, markers in `_done/atlas_links/`,
redone when the concepts change), and one task writes the summaries: atlas/concepts.parquet,
atlas/class_concepts.parquet and atlas/atlas.json (what `pipeline.run_search` opens); a
concept's global concept is its largest link (`RunFolder.concept_view`). The driver holds partition names and
counts, never vectors."""

from __future__ import annotations

import json
import logging
import posixpath
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipeline import io, schemas
from pipeline.atlas import build
from pipeline.atlas.params import AtlasParams
from pipeline.orchestration.fanout import map_tasks
from pipeline.orchestration.runtime import Progress, gpus_wanted, wait_for_gpu
from pipeline.run_folder import (ACTIVATIONS, ATLAS_ASSIGNMENTS as ASSIGNMENTS, ATLAS_CLASS_CONCEPTS as CLASS_CONCEPTS,
                                 ATLAS_CONCEPTS, ATLAS_COUNTS as COUNTS, ATLAS_INDEX as INDEX, ATLAS_LINKS as LINKS,
                                 ATLAS_MANIFEST as MANIFEST, ATLAS_SHARDS as SHARDS, ATLAS_TRAINED as TRAINED,
                                 CONCEPT_MEMBERS, CONCEPTS, DONE, PREDICTIONS, RunFolder, partition,
                                 reduction_fingerprint, unit_key)
from pipeline.stages.activate import activated_layers
from pipeline.stages.base import Job

log = logging.getLogger("pipeline")

ATLAS = "atlas"  # the stage's markers: _done/atlas/


def run(job: Job) -> None:
    job.begin("atlas")
    cfg, folder = job.cfg, job.folder
    p = cfg.atlas
    layers = activated_layers(folder)
    cpu = {"label_selector": job.cpu_selector} if job.cpu_selector else {}  # as ray.cpu_label_selector says
    labels = pc.unique(folder.read(PREDICTIONS, columns=["label"]).column("label")).to_pylist()
    classes = {partition(target_class=k): k for k in labels}  # partition folder -> class
    plans = dict(zip(layers, ray.get([plan_layer.options(**cpu).remote(folder, layer, classes) for layer in layers])))
    fingerprint = reduction_fingerprint(job.fingerprints["activate"], {"atlas": job.c["atlas"]},
                                        [(f"{layer}/{q['partition']}/{f}", str(q["rows"])) for layer in layers
                                         for q in plans[layer] for f in q["files"]])
    if folder.exists(MANIFEST) and io.read_json(folder.path(MANIFEST)).get("settings") != fingerprint:
        folder.remove(MANIFEST)  # an atlas of other settings or inputs: remade below
    done = folder.done_units(ATLAS, [TRAINED, ASSIGNMENTS, COUNTS], fingerprint, "atlas", stale="discard")
    records = {(r["kind"], r["layer"], r.get("partition")): r
               for r in map(json.loads, done.column("record").to_pylist())}
    skipped = {kind: sum(1 for key in records if key[0] == kind) for kind in ("train", "assign", "index")}

    gpu = p.device == "gpu" or (p.device == "auto" and gpus_wanted(cfg))
    if gpu and any(("train", layer, None) not in records and plans[layer] for layer in layers):
        wait_for_gpu("atlas", cfg.activate.actor_wait_s)  # an autoscaler may have to launch one
    trains = {}
    for layer in layers:
        if ("train", layer, None) in records or not plans[layer]:
            continue
        counts = [q["rows"] for q in plans[layer]]
        k = build.choose_k(sum(counts), p)
        takes = build.allocate(counts, build.sample_size(sum(counts), k, p))
        samples = [sample_partition.options(**cpu).remote(folder, layer, q["partition"], take, p.seed, i, p.spherical)
                   for i, (q, take) in enumerate(zip(plans[layer], takes)) if take]
        trains[layer] = train_layer.options(**({"num_gpus": 1} if gpu else cpu)).remote(
            folder, layer, samples, k, sum(counts), p, fingerprint)
    for layer, ref in trains.items():
        records[("train", layer, None)] = ray.get(ref)
        r = records[("train", layer, None)]
        log.info("atlas: %s: %d global concepts from %d of %d vectors (%.1f s%s), %s index", layer, r["k"],
                 r["sample"], r["vectors"], r["seconds"], " on the GPU" if r["gpu"] else "", r["index"])

    todo = [(layer, i, q) for layer in layers for i, q in enumerate(plans[layer])
            if ("assign", layer, q["partition"]) not in records
            or (("index", layer, None) not in records and not folder.exists(shard_name(layer, q["partition"])))]
    items = (((layer, q["partition"]), (folder, layer, q["partition"], q["target_class"], i, p.spherical, fingerprint))
             for layer, i, q in todo)
    for out in map_tasks(assign_partition, items, progress=Progress("atlas", len(todo), unit="partitions"),
                         label_selector=job.cpu_selector, on_error="atlas: assigning"):
        records[("assign", *out.key)] = out.value

    indexes = {layer: build_index.options(**cpu).remote(folder, layer, [q["partition"] for q in plans[layer]],
                                                        fingerprint)
               for layer in layers if plans[layer] and ("index", layer, None) not in records}
    for layer, ref in indexes.items():
        records[("index", layer, None)] = ray.get(ref)
    for layer in layers:  # the shards are in the index now
        for q in plans[layer]:
            if folder.exists(shard_name(layer, q["partition"])):
                folder.remove(shard_name(layer, q["partition"]))

    links = link_concepts(job, layers, fingerprint)
    layer_records = {layer: {**records[("train", layer, None)], **records[("index", layer, None)]}
                     for layer in layers if plans[layer]}
    summary = ray.get(summarise.options(**cpu).remote(folder, layer_records,
                                                      {layer: plans[layer] for layer in layer_records},
                                                      fingerprint))
    for layer, info in summary["layers"].items():
        log.info("atlas: %s: %d global concepts, %d in one class only, mean class entropy %s bits; index %s, %.1f MB",
                 layer, info["k"], info["single_class_concepts"], info["mean_class_entropy_bits"], info["index"],
                 info["index_mb"])
    for k, by_layer in summary["actor"].items():
        for layer, a in by_layer.items():
            where = "; ".join(f"#{g['global_concept']} {g['share']:.2f} ("
                              + ", ".join(f"{c} {s:.2f}" for c, s in g["classes"].items()) + ")"
                              for g in a["global_concepts"])
            log.info("atlas: %s/%s: the actor concept %s falls in %s; %.2f of its global concepts' members are other "
                     "classes'", k, layer, a["actor_concept"].rsplit("/", 1)[-1], where, a["other_classes_share"])
    job.finish("atlas", layers=summary["layers"], partitions_assigned=len(todo),
               units_skipped_done=skipped, concept_pairs_linked=links["linked"],
               concept_pairs_skipped_done=links["skipped"], **({"actor_concepts": summary["actor"]}
                                                               if summary["actor"] else {}))


def link_concepts(job: Job, layers: list[str], fingerprint: str) -> dict[str, int]:
    """The per-class concepts' links to the global ones, one task per (class, layer) pair
    with concepts; redone when the atlas or the concepts change."""
    folder = job.folder
    if not folder.exists(CONCEPTS):  # the atlas runs on activations alone; links wait for concepts
        return {"linked": 0, "skipped": 0}
    concept_parts = sorted(folder.read(f"{DONE}/concepts", columns=["part"]).column("part").to_pylist())
    links_fp = reduction_fingerprint(fingerprint, {"concepts": concept_parts}, [])
    done = folder.done_units("atlas_links", [LINKS], links_fp, "atlas links", stale="discard")
    finished = {(r["class"], r["layer"]) for r in map(json.loads, done.column("record").to_pylist())}
    pairs = sorted({(r["target_class"], r["layer"]) for r in folder.read(CONCEPTS, columns=["target_class",
                                                                                            "layer"]).to_pylist()})
    todo = [(k, layer) for k, layer in pairs if layer in layers and (k, layer) not in finished]
    items = (((k, layer), (folder, k, layer, links_fp)) for k, layer in todo)
    for _ in map_tasks(link_pair, items, progress=None, label_selector=job.cpu_selector,
                       on_error="atlas: linking the concepts of"):
        pass
    return {"linked": len(todo), "skipped": len(pairs) - len(todo)}


# --- the tasks ---------------------------------------------------------------------------------

@ray.remote(num_cpus=0)
def plan_layer(folder: RunFolder, layer: str, classes: dict[str, Optional[str]]) -> list[dict[str, Any]]:
    """A layer's class partitions of activations/, in name order: their class (`classes`: the
    partition folder of each), part files and rows (from the files' footers)."""
    base = folder.path(ACTIVATIONS, partition(layer=layer))
    by_partition: dict[str, list[str]] = {}
    for path in io.part_files(base):
        by_partition.setdefault(posixpath.relpath(path, base).split("/")[0], []).append(path)
    plans = []
    for name, files in sorted(by_partition.items()):
        rows = sum(io.read_metadata(f).num_rows for f in files)
        plans.append({"partition": name, "target_class": classes[name], "rows": rows,
                      "files": [posixpath.basename(f) for f in files]})
    return plans


def _vectors(folder: RunFolder, layer: str, part: str, columns: tuple[str, ...] = ()) -> tuple[pa.Table, np.ndarray]:
    """A partition's vectors in (video, supervoxel) order, whatever parts the activate stage cut
    them into (the sample, the ids and so the atlas do not depend on how the work was split)."""
    t = folder.read(f"{ACTIVATIONS}/{partition(layer=layer)}/{part}", columns=["video_id", "supervoxel_id", "vector"])
    t = t.sort_by([("video_id", "ascending"), ("supervoxel_id", "ascending")]).select([*columns, "vector"])
    return t.drop_columns(["vector"]), schemas.vector_matrix(t)


@ray.remote(num_cpus=1, max_retries=2)
def sample_partition(folder: RunFolder, layer: str, part: str, take: int, seed: int, ordinal: int,
                     spherical: bool) -> np.ndarray:
    """A partition's share of the layer's training sample."""
    _, x = _vectors(folder, layer, part)
    return build.prepare(x[build.sample_rows(len(x), take, seed, ordinal)], spherical)


@ray.remote(num_cpus=1, max_retries=2)
def train_layer(folder: RunFolder, layer: str, samples: list[ray.ObjectRef], k: int, n: int, p: AtlasParams,
                fingerprint: str) -> dict[str, Any]:
    """k-means on the layer's sample, then the trained, empty index; writes it and the marker."""
    x = np.concatenate(ray.get(samples))
    del samples
    gpus = build.faiss_gpus()
    if p.device == "gpu" and not gpus:
        raise RuntimeError("atlas.device=gpu, but FAISS sees no GPU here (install faiss-gpu, or atlas.device=auto)")
    trained = build.train(x, k, p, gpu=p.device != "cpu" and gpus > 0)
    kind = build.index_kind(n, x.shape[1], p)
    note = None
    if kind == build.IVF_PQ and len(x) < 256:
        kind, note = build.IVF_FLAT, f"IVF-PQ needs at least 256 training vectors ({len(x)} here): IVF-Flat used"
    index = build.empty_index(trained["centroids"], x, kind, p)
    table = pa.Table.from_pylist([{"layer": layer, "index": build.serialize(index)}], schema=schemas.ATLAS_TRAINED)
    record = {"kind": "train", "layer": layer, "k": int(k), "vectors": int(n), "sample": int(len(x)),
              "dim": int(x.shape[1]), "objective": trained["objective"], "seconds": round(trained["seconds"], 3),
              "gpu": trained["gpu"], "index": kind, "bytes_per_vector": build.bytes_per_vector(kind, x.shape[1], p),
              "nprobe": int(index.nprobe), "spherical": bool(p.spherical), "note": note}
    folder.write_unit(ATLAS, unit_key(layer, "train"), [(f"{TRAINED}/{partition(layer=layer)}", table)],
                      [{"record": record}], fingerprint)
    return record


def shard_name(layer: str, part: str) -> str:
    """A partition's shard of its layer's index (removed once the index is merged)."""
    return f"{SHARDS}/{partition(layer=layer)}/{part}.faiss"


def trained_index(folder: RunFolder, layer: str) -> Any:
    """A layer's trained, empty index (its coarse quantizer holds the global concepts)."""
    t = folder.read(f"{TRAINED}/{partition(layer=layer)}", columns=["index"])
    return build.deserialize(t.column("index")[0].as_py())


def assign_partition(folder: RunFolder, layer: str, part: str, k: Optional[str], ordinal: int, spherical: bool,
                     fingerprint: str) -> dict[str, Any]:
    """One class partition of a layer (a Ray task): every vector's global concept, the
    partition's counts, its shard of the index; writes them, then the marker."""
    index = trained_index(folder, layer)
    k_concepts = index.nlist
    ids, x = _vectors(folder, layer, part, ("video_id", "supervoxel_id"))
    atlas_ids = build.atlas_ids(ordinal, len(x))
    labels, dist = build.add_assigned(index, build.prepare(x, spherical), atlas_ids)
    folder.write_with(shard_name(layer, part), build.save(index))
    del index, x
    vids, sids = ids.column("video_id").to_pylist(), ids.column("supervoxel_id").to_pylist()
    table = pa.table({"video_id": pa.array(vids, pa.string()), "supervoxel_id": pa.array(sids, pa.int64()),
                      "layer": pa.array([layer] * len(vids), pa.string()),
                      "target_class": pa.array([k] * len(vids), pa.string()),
                      "global_concept": pa.array(labels.astype(np.int32)), "distance": pa.array(dist),
                      "atlas_id": pa.array(atlas_ids)}, schema=schemas.ATLAS_ASSIGNMENTS)
    groups = [table.slice(i, build.ROWS_PER_GROUP) for i in range(0, max(1, table.num_rows), build.ROWS_PER_GROUP)]
    counts = [{"layer": layer, "target_class": k, **r}
              for r in build.partition_counts(vids, sids, labels, dist, k_concepts)]
    where = partition(layer=layer, target_class=k)
    record = {"kind": "assign", "layer": layer, "partition": part, "rows": len(vids)}
    folder.write_unit(ATLAS, unit_key(layer, part), [(f"{ASSIGNMENTS}/{where}", groups),
                                                     (f"{COUNTS}/{where}", pa.Table.from_pylist(
                                                         counts, schema=schemas.ATLAS_COUNTS))],
                      [{"record": record}], fingerprint)
    return record


@ray.remote(num_cpus=1, max_retries=2)
def build_index(folder: RunFolder, layer: str, partitions: list[str], fingerprint: str) -> dict[str, Any]:
    """The layer's shards merged into one index, written with FAISS's own serialisation."""
    index = build.merge(build.load(folder.path(shard_name(layer, part))) for part in partitions)
    name = f"{INDEX}/{partition(layer=layer)}.faiss"
    folder.write_with(name, build.save(index))
    record = {"kind": "index", "layer": layer, "file": name, "ntotal": int(index.ntotal),
              "bytes": int(io.file_size(folder.path(name)))}
    del index
    folder.write_unit(ATLAS, unit_key(layer, "index"), [], [{"record": record}], fingerprint)
    return record


def link_pair(folder: RunFolder, target_class: str, layer: str, fingerprint: str) -> dict[str, Any]:
    """A (class, layer)'s concepts linked to the global concepts their members fall into."""
    members = folder.read(f"{CONCEPT_MEMBERS}/{partition(target_class=target_class, layer=layer)}",
                          columns=["target_class", "layer", "concept", "video_id", "supervoxel_id"]).to_pylist()
    vids = sorted({m["video_id"] for m in members})
    global_of = _assigned(folder, partition(layer=layer, target_class=target_class), vids)
    others = sorted({m["video_id"] for m in members if (m["video_id"], m["supervoxel_id"]) not in global_of})
    if others:  # a user's concept may hold other classes' videos: the layer's assignments
        global_of.update(_assigned(folder, partition(layer=layer), others))
    rows = build.concept_links(members, global_of)
    record = {"class": target_class, "layer": layer, "links": len(rows)}
    where = f"{LINKS}/{partition(layer=layer, target_class=target_class)}"
    folder.write_unit("atlas_links", unit_key(target_class, layer),
                      [(where, pa.Table.from_pylist(rows, schema=schemas.ATLAS_LINKS))],
                      [{"record": record}], fingerprint)
    return record


def _assigned(folder: RunFolder, where: str, video_ids: list[str]) -> dict[tuple[str, int], int]:
    """(video_id, supervoxel_id) -> global concept, for some videos' supervoxels assigned under
    `where` (a partition of atlas/assignments/)."""
    try:
        a = folder.read(
            f"{ASSIGNMENTS}/{where}",
            columns=["video_id", "supervoxel_id", "global_concept"],
            filter=pc.is_in(pc.field("video_id"), pa.array(video_ids, pa.string())),
        )
    except FileNotFoundError:
        return {}
    return dict(
        zip(
            zip(a.column("video_id").to_pylist(), a.column("supervoxel_id").to_pylist()),
            a.column("global_concept").to_pylist(),
        )
    )


@ray.remote(num_cpus=1, max_retries=2)
def summarise(folder: RunFolder, layers: dict[str, dict[str, Any]], plans: dict[str, list[dict[str, Any]]],
              fingerprint: str) -> dict[str, Any]:
    """atlas/concepts.parquet, atlas/class_concepts.parquet and atlas/atlas.json; returns the
    stage's summary for run.json, with where each class's actor concept falls on a synthetic
    corpus (the concepts stage's ground truth)."""
    concept_rows: list[dict[str, Any]] = []
    cell_rows: list[dict[str, Any]] = []
    out: dict[str, Any] = {"layers": {}, "actor": {}}
    for layer, r in layers.items():
        centroids = build.centroids_of(trained_index(folder, layer))
        counts = folder.read(f"{COUNTS}/{partition(layer=layer)}").to_pylist()
        concepts, cells = build.concept_table(layer, centroids, counts)
        concept_rows += concepts
        cell_rows += cells
        entropies = np.asarray([c["class_entropy"] for c in concepts if c["size"]])
        out["layers"][layer] = {
            **{f: r[f] for f in ("k", "vectors", "sample", "dim", "seconds", "gpu", "index", "bytes_per_vector",
                                 "nprobe", "spherical", "note")},
            "index_mb": round(r["bytes"] / 1e6, 3), "empty_concepts": sum(1 for c in concepts if not c["size"]),
            "single_class_concepts": int(sum(1 for c in concepts if c["num_classes"] == 1)),
            "mean_class_entropy_bits": round(float(entropies.mean()), 4) if len(entropies) else None}
    folder.write_table(ATLAS_CONCEPTS, pa.Table.from_pylist(concept_rows, schema=schemas.ATLAS_CONCEPTS))
    folder.write_table(CLASS_CONCEPTS, pa.Table.from_pylist(cell_rows, schema=schemas.ATLAS_CLASS_CONCEPTS))

    links = folder.read(LINKS).to_pylist() if io.part_files(folder.path(LINKS)) else []
    out["actor"] = build.actor_placements(folder.actor_concepts(), links, concept_rows)
    linked = (schemas.concepts_digest(folder.read(CONCEPTS, columns=["concept", "rank", "tcav_mean"]))
              if links else None)  # which concepts the links are of (`RunFolder.concept_links`)
    folder.write_json(MANIFEST, {"settings": fingerprint, "concepts": linked, "layers": {
        layer: {"k": r["k"], "dim": r["dim"], "index": r["index"], "nprobe": r["nprobe"],
                "spherical": r["spherical"], "file": r["file"], "ntotal": r["ntotal"],
                "partitions": [{"partition": q["partition"], "target_class": q["target_class"], "rows": q["rows"]}
                               for q in plans[layer]]} for layer, r in layers.items()}})
    return out

