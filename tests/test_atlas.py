"""The global concept atlas: its algorithm on small real arrays (real FAISS), then the atlas the
default job writes on the synthetic corpus (every supervoxel assigned, the tables add up, each
class's concepts linked), searched through `open_run(...).nearest` and `python -m pipeline.atlas
query`, its report page in a real browser, and a rerun that skips it or redoes only the
partitions whose units were not finished."""

from __future__ import annotations

import glob
import json
import math
import os
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.atlas import build
from pipeline.atlas.params import AtlasParams
from pipeline.io import read_parts
from tests.conftest import call_main, run_cli, run_job_here


# --- the algorithm ----------------------------------------------------------------------------

def test_k_scales_with_the_vectors_within_its_bounds():
    p = AtlasParams()
    assert build.choose_k(10_000, p) == 100
    assert build.choose_k(100, p) == 5  # sqrt says 10 (>= k_min 8), but 20 points per centroid at least
    assert build.choose_k(10**9, p) == p.k_max
    assert build.choose_k(0, p) == 0
    assert build.choose_k(50, AtlasParams(k=70)) == 50  # an explicit k, at most one vector each


def test_the_sample_is_spread_over_partitions_in_proportion_and_is_seeded():
    take = build.allocate([1000, 10, 0, 490], 300)
    assert sum(take) == 300 and take[2] == 0
    assert take == [200, 2, 0, 98]
    assert build.allocate([3, 3], 100) == [3, 3]  # never more than a partition holds
    a, b = build.sample_rows(1000, 50, 0, 3), build.sample_rows(1000, 50, 0, 3)
    assert np.array_equal(a, b) and len(set(a.tolist())) == 50 and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, build.sample_rows(1000, 50, 0, 4))


def _clustered(n: int, d: int, centres: int, seed: int = 0, scale: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = rng.normal(scale=scale, size=(centres, d)).astype(np.float32)
    truth = rng.integers(0, centres, size=n)
    return (c[truth] + rng.normal(size=(n, d))).astype(np.float32), truth


def test_the_index_lists_are_the_global_concepts_and_shards_merge_with_their_ids():
    x, _ = _clustered(4000, 16, 20)
    p = AtlasParams(k=20, nprobe=20)
    trained = build.train(x, 20, p, gpu=False)
    labels, dist = build.assign(x, trained["centroids"])
    template = build.serialize(build.empty_index(trained["centroids"], x, build.IVF_FLAT, p))
    shards = []
    for ordinal, rows in enumerate((slice(0, 2500), slice(2500, 4000))):
        shard = build.deserialize(template)
        n = rows.stop - rows.start
        shard.add_with_ids(x[rows], build.atlas_ids(ordinal, n))
        shards.append(build.deserialize(build.serialize(shard)))  # through FAISS's serialisation
    index = build.merge(shards)
    assert index.ntotal == 4000
    import faiss

    invlists = index.invlists
    for g in (0, 7, 19):  # each inverted list holds exactly the vectors assigned to that concept
        ids = faiss.rev_swig_ptr(invlists.get_ids(g), invlists.list_size(g)).copy()
        ordinal, row = build.split_ids(ids)
        expect = np.flatnonzero(labels == g)
        assert sorted((ordinal * 2500 + row).tolist()) == expect.tolist()
    sq, found = index.search(x[2600:2601], 1)  # every list searched: exact, itself first
    assert build.split_ids(found[0])[0][0] == 1 and build.split_ids(found[0])[1][0] == 100
    centroids = build.centroids_of(index)
    assert np.allclose(centroids, trained["centroids"])
    for kind in (build.IVF_SQ8, build.IVF_PQ):  # the compressed indexes keep the same lists
        small = build.empty_index(trained["centroids"], x, kind, p)
        small.add_with_ids(x, np.arange(4000, dtype=np.int64))
        assert np.allclose(build.centroids_of(small), centroids)
        _, near = small.search(x[:50], 1)
        assert (near[:, 0] == np.arange(50)).mean() >= (0.9 if kind == build.IVF_SQ8 else 0.5)
    assert np.allclose(dist, np.linalg.norm(x - centroids[labels], axis=1), atol=1e-3)


def test_kmeans_plus_plus_seeding_finds_every_separated_cluster():
    x, truth = _clustered(6000, 16, 30, seed=2, scale=10.0)  # clusters ~50 apart, ~6 across
    centres = np.stack([x[truth == c].mean(axis=0) for c in range(30)])
    found = build.train(x, 30, AtlasParams(k=30), gpu=False)["centroids"]
    assert np.linalg.norm(centres[:, None] - found[None], axis=2).min(axis=1).max() < 0.5  # each has its own
    for seeds in (build.kmeans_plus_plus(x, 30, 0), build.kmeans_parallel(x, 30, 0)):  # both are rows of x
        assert all((x == r).all(axis=1).any() for r in seeds)
        assert len(set(np.linalg.norm(centres[:, None] - seeds[None], axis=2).argmin(axis=0).tolist())) == 30
    # k-means|| (the default) ends as low as greedy k-means++ on all the points; FAISS's own
    # seeding (k random vectors) on the same data leaves some merged, others split
    x, _ = _clustered(20000, 32, 200, seed=3)
    inertia = {init: float(np.square(build.assign(x, build.train(x, 200, AtlasParams(k=200, init=init), gpu=False)[
        "centroids"])[1]).sum()) for init in ("kmeans||", "kmeans++", "random")}
    assert inertia["kmeans||"] <= 1.02 * inertia["kmeans++"] and inertia["kmeans++"] < inertia["random"]


def test_weighted_kmeans_plus_plus_seeds_where_the_weight_is():
    """k-means||'s reduction: a row of weight w pulls the seeding as w copies of it would. 190
    rows near 0 weigh almost nothing, 10 rows near 10 weigh one each: both seeds fall among the
    10, where unweighted seeding puts at most one there."""
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(0, 1, (190, 8)), rng.normal(10, 1, (10, 8))]).astype(np.float32)
    weights = np.r_[np.full(190, 1e-6), np.ones(10)]
    def heavy_side(seeds):
        return int((np.linalg.norm(seeds - 10, axis=1) < np.linalg.norm(seeds, axis=1)).sum())
    assert all(heavy_side(build.kmeans_plus_plus(x, 2, s, weights=weights)) == 2 for s in range(10))
    assert all(heavy_side(build.kmeans_plus_plus(x, 2, s)) <= 1 for s in range(10))


def test_concept_table_shares_entropy_and_links_by_hand():
    centroids = np.zeros((3, 2), np.float32)
    ex = {"exemplar_video_ids": ["v"], "exemplar_supervoxel_ids": [1], "exemplar_distances": [0.5]}
    counts = [{"target_class": "a", "global_concept": 0, "members": 30, "videos": 3, **ex},
              {"target_class": "b", "global_concept": 0, "members": 10, "videos": 2, **ex},
              {"target_class": "a", "global_concept": 1, "members": 10, "videos": 1, **ex}]
    concepts, cells = build.concept_table("L", centroids, counts)
    c0, c1, c2 = concepts
    assert (c0["size"], c0["num_videos"], c0["classes"], c0["class_shares"]) == (40, 5, ["a", "b"], [0.75, 0.25])
    assert c0["class_entropy"] == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)), abs=1e-6)
    assert (c1["class_entropy"], c1["top_class"], c1["top_class_share"]) == (0.0, "a", 1.0)
    assert c2["size"] == 0 and c2["classes"] == []
    a0 = next(r for r in cells if r["target_class"] == "a" and r["global_concept"] == 0)
    assert a0["share_of_class"] == pytest.approx(0.75) and a0["share_of_concept"] == pytest.approx(0.75)
    members = [{"target_class": "a", "layer": "L", "concept": "a/L/concept_0", "video_id": "v", "supervoxel_id": i}
               for i in range(4)]
    links = build.concept_links(members, {("v", 0): 2, ("v", 1): 2, ("v", 2): 2, ("v", 3): 0})
    assert [(r["global_concept"], r["members"], r["share"]) for r in links] == [(2, 3, 0.75), (0, 1, 0.25)]


def test_atlas_settings_are_checked_naming_the_key():
    res = call_main("atlas.index=hnsw", "run.output_dir=/tmp/never-written-atlas")
    assert res.returncode != 0 and "atlas.index" in res.stderr + res.stdout
    assert not os.path.exists("/tmp/never-written-atlas/run.json")


# --- the atlas of the default job -------------------------------------------------------------

def test_the_default_job_writes_the_atlas(small_run):
    out, record = small_run["out"], small_run["record"]
    stage = record["stages"]["atlas"]
    act = read_parts(os.path.join(out, "activations")).to_pandas()
    assign = read_parts(os.path.join(out, "atlas", "assignments")).to_pandas()
    for layer, info in stage["layers"].items():
        mine = act[act.layer == layer]
        got = assign[assign.layer == layer]
        # every kept supervoxel vector of every class is assigned, once
        assert len(got) == len(mine) and info["vectors"] == len(mine)
        assert set(zip(got.video_id, got.supervoxel_id)) == set(zip(mine.video_id, mine.supervoxel_id))
        assert info["k"] == build.choose_k(len(mine), AtlasParams())
        assert got.global_concept.between(0, info["k"] - 1).all() and got.atlas_id.is_unique
    concepts = pq.read_table(os.path.join(out, "atlas", "concepts.parquet")).to_pandas()
    cells = pq.read_table(os.path.join(out, "atlas", "class_concepts.parquet")).to_pandas()
    sizes = assign.groupby(["layer", "global_concept"]).size()
    for r in concepts.itertuples():
        assert r.size == sizes.get((r.layer, r.global_concept), 0)
        if r.size:
            assert abs(sum(r.class_shares) - 1) < 1e-4 and r.top_class == r.classes[0]
    per_class = cells.groupby(["target_class", "layer"]).share_of_class.sum()
    assert np.allclose(per_class.values, 1, atol=1e-3)
    # every concept of concepts.parquet is linked to the global concepts its members fall into;
    # the run's concepts, as read, carry the one holding most of their members
    from pipeline.run_folder import RunFolder

    run_concepts = RunFolder(out).concept_view().to_pandas()
    links = read_parts(os.path.join(out, "atlas", "concept_links")).to_pandas()
    assert set(links.concept) == set(run_concepts.concept)
    assert run_concepts.global_concept.notna().all()
    members = read_parts(os.path.join(out, "concept_members")).to_pandas().merge(
        assign, on=["video_id", "supervoxel_id", "layer"])
    top = members.groupby("concept").global_concept.agg(lambda s: s.value_counts().sort_index().idxmax())
    for r in run_concepts.itertuples():
        assert r.global_concept == top[r.concept]
    # the index: every vector, FAISS's own file; the shards are gone once merged
    manifest = json.load(open(os.path.join(out, "atlas", "atlas.json")))
    for layer, info in manifest["layers"].items():
        assert info["ntotal"] == stage["layers"][layer]["vectors"]
        assert os.path.isfile(os.path.join(out, info["file"]))
    assert not glob.glob(os.path.join(out, "atlas", "_shards", "**", "*.faiss"), recursive=True)
    # on the synthetic corpus: where each class's actor concept falls, and who shares it
    actor = stage["actor_concepts"]
    assert set(actor) == set(run_concepts.target_class)
    for k, by_layer in actor.items():
        for layer, a in by_layer.items():
            first = a["global_concepts"][0]
            assert first["global_concept"] == top[a["actor_concept"]] and k in first["classes"]
            assert 0 <= a["other_classes_share"] <= 1


def test_nearest_from_the_api_and_the_query_command(small_run):
    from pipeline import open_run

    out = small_run["out"]
    run = open_run(out)
    assign = run.table("atlas_assignments")
    act = run.activations(layer="layer2")
    row = act.iloc[5]
    # (video_id, supervoxel_id): the exact nearest neighbours by brute force, itself left out
    found = run.nearest((row.video_id, int(row.supervoxel_id)), k=5, layer="layer2", nprobe=10_000)
    x = np.stack(act.vector.to_numpy()).astype(np.float32)
    d = np.linalg.norm(x - x[5], axis=1)
    d[5] = np.inf
    expect = np.sort(d)[:5]
    assert list(found["rank"]) == [1, 2, 3, 4, 5]
    assert np.allclose(found.distance.to_numpy(), expect, atol=1e-3)
    assert (row.video_id, row.supervoxel_id) not in set(zip(found.video_id, found.supervoxel_id))
    truth = assign.set_index(["video_id", "supervoxel_id", "layer"])
    for r in found.itertuples():  # the ids resolve to the rows of their own supervoxels
        t = truth.loc[(r.video_id, r.supervoxel_id, "layer2")]
        assert t.target_class == r.target_class and t.global_concept == r.global_concept
    # a vector, a global concept, a class concept
    by_vector = run.nearest(x[5], k=3, layer="layer2", nprobe=10_000)
    assert by_vector.distance.iloc[0] == pytest.approx(0, abs=1e-4)
    g = int(found.global_concept.iloc[0])
    by_concept = run.nearest(g, k=4, layer="layer2")
    assert len(by_concept) == 4 and by_concept.distance.is_monotonic_increasing
    name = run.concepts.concept.iloc[0]
    assert len(run.nearest(name, k=3)) == 3
    with pytest.raises(ValueError, match="layers"):
        run.nearest(g)  # two layers: which one?
    # the shell
    res = run_cli("query", f"run_dir={out}", f"video_id={row.video_id}", f"supervoxel_id={int(row.supervoxel_id)}",
                  "layer=layer2", "k=5", "nprobe=10000", "format=json", module="pipeline.atlas")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["video_id"] for r in rows] == list(found.video_id)
    res = call_main("query", f"run_dir={out}", f"concept={name}", module="pipeline.atlas")
    assert res.returncode == 0 and res.stdout.splitlines()[0].split("\t")[:3] == ["rank", "layer", "video_id"]
    assert len(res.stdout.splitlines()) == 11
    res = call_main("query", f"run_dir={out}", "global_concept=3", module="pipeline.atlas")
    assert res.returncode == 2 and "layer" in res.stderr
    res = call_main("query", f"run_dir={out}", "video=x", module="pipeline.atlas")
    assert res.returncode == 2 and "unknown key 'video'" in res.stderr


def test_the_atlas_page_opens_in_a_browser(small_run):
    from tests.test_report import check_in_browser, page_sources

    out = small_run["out"]
    page = os.path.join(out, "report", "atlas.html")
    assert os.path.isfile(page)
    assert 'href="atlas.html"' in open(os.path.join(out, "report", "index.html"), encoding="utf-8").read()
    parsed = page_sources(page)
    for src in parsed.sources:
        assert not src.startswith(("/", "http")) and os.path.isfile(os.path.join(out, "report", src)), src
    text = open(page, encoding="utf-8").read()
    layers = small_run["record"]["stages"]["atlas"]["layers"]
    assert sum(s.endswith("classes-by-concepts.png") for s in parsed.sources) == len(layers)
    for title in ("Largest", "Most shared across classes", "Most class-specific", "actor concept falls"):
        assert text.count(title) == len(layers)
    # the cards' clips come from several classes
    captions = [c.split("<br>")[0] for c in text.split("<figcaption>")[1:]]
    assert len(set(captions)) >= 2
    check_in_browser(page)


def test_a_rerun_skips_the_atlas_and_redoes_only_unfinished_partitions(small_run, tmp_path):
    """(A driver killed during assignment: tests/test_resilience.py.)"""
    out = str(tmp_path / "run")
    shutil.copytree(small_run["out"], out)
    args = [f"run.output_dir={out}", *small_run["args"], "run.stages=[atlas]"]
    run_job_here(*args)
    stage = json.load(open(os.path.join(out, "run.json")))["stages"]["atlas"]
    assert stage["partitions_assigned"] == 0 and stage["concept_pairs_linked"] == 0
    assert stage["units_skipped_done"] == {"train": 2, "assign": 6, "index": 2}
    before = read_parts(os.path.join(out, "atlas", "assignments")).to_pandas()
    # two partitions' markers never written: their parts are crash leftovers
    for path in glob.glob(os.path.join(out, "_done", "atlas", "*.parquet")):
        r = json.loads(pq.read_table(path).column("record")[0].as_py())
        if r["kind"] == "assign" and r["layer"] == "layer2" and r["partition"] in ("advance", "retreat"):
            os.remove(path)
    run_job_here(*args)
    stage = json.load(open(os.path.join(out, "run.json")))["stages"]["atlas"]
    assert stage["partitions_assigned"] == 2
    assert stage["units_skipped_done"] == {"train": 2, "assign": 4, "index": 2}
    after = read_parts(os.path.join(out, "atlas", "assignments")).to_pandas()
    key = ["layer", "video_id", "supervoxel_id"]
    pd.testing.assert_frame_equal(before.sort_values(key).reset_index(drop=True),
                                  after.sort_values(key).reset_index(drop=True))
    assert len(glob.glob(os.path.join(out, "atlas", "assignments", "layer2", "advance", "*.parquet"))) == 1
    # other atlas settings: the atlas is made again
    run_job_here(*args, "atlas.k=5")
    stage = json.load(open(os.path.join(out, "run.json")))["stages"]["atlas"]
    assert stage["units_skipped_done"] == {"train": 0, "assign": 0, "index": 0}
    assert all(info["k"] == 5 for info in stage["layers"].values())
    from pipeline import open_run

    run = open_run(out)
    act = run.activations(layer="layer2")
    hit = run.nearest((act.video_id.iloc[0], int(act.supervoxel_id.iloc[0])), k=3, layer="layer2")
    assert len(hit) == 3 and set(hit.global_concept) <= set(range(5))
