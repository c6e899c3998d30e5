"""The atlas's algorithm, without Ray: how many global concepts, the training sample, FAISS
k-means, the assignment of every vector, the search index (its inverted lists are the global
concepts), and the tables that summarise it. The atlas stage (`pipeline.stages.atlas`)
schedules these over a layer's class partitions."""

from __future__ import annotations

import math
import time
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from pipeline.atlas.params import AtlasParams

IVF_FLAT, IVF_SQ8, IVF_PQ = "ivf_flat", "ivf_sq8", "ivf_pq"
ROW_BITS = 32  # an atlas id: partition ordinal << 32 | row in the partition's assignments
EXEMPLARS = 3  # nearest members kept per (class, global concept)
ROWS_PER_GROUP = 16384  # the assignments' row groups: a search result reads one group


def choose_k(n: int, p: AtlasParams) -> int:
    """Global concepts for a layer of n vectors: `k`, or round(sqrt(n)) within [k_min, k_max];
    never more than n / min_points_per_centroid (nor than n)."""
    if n <= 0:
        return 0
    k = p.k if p.k else min(max(round(math.sqrt(n)), p.k_min), p.k_max)
    return int(max(1, min(k, n if p.k else max(1, n // p.min_points_per_centroid))))


def sample_size(n: int, k: int, p: AtlasParams) -> int:
    return int(min(n, k * p.max_points_per_centroid))


def allocate(counts: Sequence[int], total: int) -> list[int]:
    """`total` sample rows spread over partitions in proportion to their sizes (largest
    remainders), so that the sample is uniform over the whole layer."""
    n = int(sum(counts))
    if n == 0 or total <= 0:
        return [0] * len(counts)
    exact = [c * total / n for c in counts]
    take = [min(c, int(math.floor(e))) for c, e in zip(counts, exact)]
    order = sorted(range(len(counts)), key=lambda i: (-(exact[i] - take[i]), i))
    short = min(total, n) - sum(take)
    for i in order:
        if short <= 0:
            break
        if take[i] < counts[i]:
            take[i] += 1
            short -= 1
    return take


def sample_rows(n: int, take: int, seed: int, ordinal: int) -> np.ndarray:
    """`take` of a partition's n rows, uniformly without replacement, sorted; seeded by the
    atlas's seed and the partition's ordinal (the same rows on every run)."""
    rng = np.random.default_rng([int(seed), int(ordinal)])
    return np.sort(rng.choice(n, size=min(take, n), replace=False)) if take < n else np.arange(n)


def prepare(vectors: Any, spherical: bool) -> np.ndarray:
    """Vectors as FAISS takes them (float32, C order), L2-normalised when `spherical`."""
    x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if spherical and len(x):
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)
    return x


def faiss_gpus() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def kmeans_plus_plus(x: np.ndarray, k: int, seed: int, weights: Optional[np.ndarray] = None) -> np.ndarray:
    """Greedy k-means++ seeding (as scikit-learn's): each next centre is the best of 2 + log(k)
    candidates drawn with probability proportional to their squared distance to the nearest
    centre chosen, the one that lowers the sum of those distances most. k rows of x, float32.
    `weights`: each row counts that many times (k-means||'s candidates)."""
    rng = np.random.default_rng(seed)
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    norms = np.einsum("ij,ij->i", x, x)
    trials = 2 + int(np.log(k))
    w = None if weights is None else np.asarray(weights, dtype=np.float64)

    def sq_dist(rows: np.ndarray) -> np.ndarray:  # [len(rows), n] squared distances to x
        c = x[rows]
        return np.maximum(norms[None, :] - 2 * (c @ x.T) + norms[rows, None], 0)

    chosen = [int(rng.integers(n)) if w is None else int(rng.choice(n, p=w / w.sum()))]
    d2 = sq_dist(np.asarray(chosen))[0]
    for _ in range(1, k):
        mass = d2 if w is None else d2 * w
        total = float(mass.sum(dtype=np.float64))
        if total <= 0:  # fewer distinct points than k: the rest at random
            chosen.append(int(rng.integers(n)))
            continue
        cand = np.minimum(np.searchsorted(np.cumsum(mass, dtype=np.float64), rng.random(trials) * total), n - 1)
        new = np.minimum(d2[None, :], sq_dist(cand))
        best = int(np.argmin(new.sum(axis=1, dtype=np.float64) if w is None else new @ w))
        chosen.append(int(cand[best]))
        d2 = new[best]
    return x[np.asarray(chosen)].copy()


def kmeans_parallel(x: np.ndarray, k: int, seed: int, rounds: int = 4, oversample: float = 1.0) -> np.ndarray:
    """k-means|| seeding (Bahmani et al. 2012): `rounds` passes over x, each keeping every point
    with probability min(1, oversample k d^2 / sum d^2) (d: its distance to the nearest point
    kept so far); the candidates, weighted by the points nearest them, are reduced to k by
    greedy k-means++. Four passes instead of k, so far fewer reads of x than k-means++ on it.
    k rows, float32."""
    rng = np.random.default_rng([seed, 2])
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    kept = [x[rng.integers(n)][None]]
    d2 = np.square(x - kept[0]).sum(axis=1, dtype=np.float64)
    for _ in range(rounds):
        total = d2.sum()
        if total <= 0:
            break
        picked = x[rng.random(n) < np.minimum(1.0, oversample * k * d2 / total)]
        if not len(picked):
            continue
        kept.append(picked)
        d2 = np.minimum(d2, np.square(assign(x, picked)[1], dtype=np.float64))
    candidates = np.concatenate(kept)
    if len(candidates) <= k:
        return kmeans_plus_plus(x, k, seed)
    weights = np.bincount(assign(x, candidates)[0], minlength=len(candidates))
    used = weights > 0
    return kmeans_plus_plus(candidates[used], k, seed, weights=weights[used])


def train(sample: np.ndarray, k: int, p: AtlasParams, gpu: Optional[bool] = None) -> dict[str, Any]:
    """FAISS k-means on the sample, seeded by k-means++ on a subsample of it (`init_points`;
    FAISS's own seeding is k random points, which leaves clusters merged and others split):
    {centroids [k, d], objective (the sample's sum of squared distances), seconds, gpu}."""
    import faiss

    gpu = faiss_gpus() > 0 if gpu is None else gpu
    t0 = time.perf_counter()
    km = faiss.Kmeans(sample.shape[1], int(k), niter=int(p.niter), nredo=int(p.nredo), seed=int(p.seed),
                      spherical=bool(p.spherical), gpu=bool(gpu), verbose=False, min_points_per_centroid=1,
                      max_points_per_centroid=max(1, -(-len(sample) // int(k))))  # the sample is drawn already
    if p.init in ("kmeans||", "kmeans++") and k > 1:
        rng = np.random.default_rng([int(p.seed), 1])
        sub = sample[rng.choice(len(sample), min(len(sample), max(p.init_points, 3 * k)), replace=False)]
        seeding = kmeans_parallel if p.init == "kmeans||" else kmeans_plus_plus
        init = seeding(sub, int(k), p.seed)
        km.train(sample, init_centroids=prepare(init, p.spherical))
    else:
        km.train(sample)
    return {"centroids": np.ascontiguousarray(km.centroids, dtype=np.float32), "objective": float(km.obj[-1]),
            "seconds": time.perf_counter() - t0, "gpu": bool(gpu)}


def index_kind(n: int, d: int, p: AtlasParams) -> str:
    if p.index != "auto":
        return p.index
    return IVF_FLAT if n * bytes_per_vector(IVF_FLAT, d, p) <= p.index_flat_max_gb * 1e9 else IVF_PQ


def pq_bytes(d: int, p: AtlasParams) -> int:
    """IVF-PQ's code bytes per vector: `pq_bytes`, or the largest divisor of d up to d / 4."""
    if p.pq_bytes:
        return p.pq_bytes
    return max(m for m in range(1, max(1, d // 4) + 1) if d % m == 0)


def bytes_per_vector(kind: str, d: int, p: AtlasParams) -> int:
    """The index's bytes per vector: its code and its 8-byte id."""
    return {IVF_FLAT: 4 * d, IVF_SQ8: d, IVF_PQ: pq_bytes(d, p)}[kind] + 8


def empty_index(centroids: np.ndarray, sample: np.ndarray, kind: str, p: AtlasParams) -> Any:
    """A trained, empty IVF index whose coarse quantizer holds the atlas's centroids (a vector's
    inverted list is its global concept); IVF-PQ's codebooks are trained on the sample."""
    import faiss

    k, d = centroids.shape
    quantizer = faiss.IndexFlatL2(d)
    quantizer.add(centroids)
    if kind == IVF_FLAT:
        index = faiss.IndexIVFFlat(quantizer, d, k, faiss.METRIC_L2)
    elif kind == IVF_SQ8:
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, k, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_L2)
    else:
        m = pq_bytes(d, p)
        if d % m:
            raise ValueError(f"atlas.pq_bytes = {m} must divide the layer's dimension {d}")
        index = faiss.IndexIVFPQ(quantizer, d, k, m, 8)
    index.train(sample)  # the quantizer is trained (k centroids): only the codes' ranges or codebooks are
    index.nprobe = int(min(p.nprobe, k))
    return index


def centroids_of(index: Any) -> np.ndarray:
    """The global concepts' centroids: the coarse quantizer's vectors of an atlas index."""
    import faiss

    quantizer = faiss.downcast_index(index.quantizer)
    return quantizer.reconstruct_n(0, quantizer.ntotal).astype(np.float32)


def serialize(index: Any) -> bytes:
    """An index in FAISS's own serialisation."""
    import faiss

    return faiss.serialize_index(index).tobytes()


def deserialize(data: bytes) -> Any:
    import faiss

    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def save(index: Any) -> Any:
    """`write(local_path)` writing an index with FAISS's own writer (`RunFolder.write_with`):
    no second copy of it in memory."""
    import faiss

    return lambda path: faiss.write_index(index, path)


def load(path: str, mmap: bool = False) -> Any:
    """An index file (a path or a URI). `mmap`: an IVF index's lists stay on disk, paged in as
    searches read them (a local file only)."""
    import faiss

    from pipeline import io

    local = io.local_path(path)
    if local is not None:
        return faiss.read_index(local, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0)
    return deserialize(io.read_bytes(path))


def atlas_ids(ordinal: int, n: int) -> np.ndarray:
    return (np.int64(ordinal) << ROW_BITS) | np.arange(n, dtype=np.int64)


def split_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(partition ordinal, row) of atlas ids."""
    ids = np.asarray(ids, dtype=np.int64)
    return ids >> ROW_BITS, ids & ((1 << ROW_BITS) - 1)


def assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each vector's nearest centroid and its L2 distance to it."""
    import faiss

    flat = faiss.IndexFlatL2(centroids.shape[1])
    flat.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return _nearest(flat, x)


def _nearest(quantizer: Any, x: np.ndarray, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Each vector's nearest vector of `quantizer` (an index) and the L2 distance, in chunks."""
    labels = np.empty(len(x), dtype=np.int64)
    dist = np.empty(len(x), dtype=np.float32)
    for i in range(0, len(x), chunk):
        sq, idx = quantizer.search(x[i:i + chunk], 1)
        labels[i:i + chunk], dist[i:i + chunk] = idx[:, 0], np.sqrt(np.maximum(sq[:, 0], 0))
    return labels, dist


def add_assigned(index: Any, x: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Add vectors to an atlas index with their ids; each vector's inverted list (its global
    concept) is found once, by the index's own quantizer, and returned with the distance."""
    from faiss.contrib.ivf_tools import add_preassigned

    labels, dist = _nearest(index.quantizer, x)
    add_preassigned(index, x, labels, np.ascontiguousarray(ids, dtype=np.int64))
    return labels, dist


def merge(shards: Iterable[Any]) -> Any:
    """One index from shards (indexes) that share a trained empty index, their ids kept: holds
    the merged index and one shard at a time."""
    index = None
    for shard in shards:
        if index is None:
            index = shard
        else:
            index.merge_from(shard, 0)
    return index


def partition_counts(video_ids: Sequence[str], supervoxel_ids: Sequence[int], labels: np.ndarray,
                     distances: np.ndarray, k: int) -> list[dict[str, Any]]:
    """One partition's share of each global concept it has members in: members, distinct
    videos, and its EXEMPLARS nearest members (video, supervoxel, distance)."""
    vids = np.asarray(video_ids, dtype=object)
    sids = np.asarray(supervoxel_ids, dtype=np.int64)
    rows = []
    order = np.lexsort((distances, labels))  # by concept, nearest first
    bounds = np.searchsorted(labels[order], np.arange(k + 1))
    for g in range(k):
        members = order[bounds[g]:bounds[g + 1]]
        if not len(members):
            continue
        near = members[:EXEMPLARS]
        rows.append({"global_concept": g, "members": int(len(members)), "videos": int(len(set(vids[members]))),
                     "exemplar_video_ids": vids[near].tolist(), "exemplar_supervoxel_ids": sids[near].tolist(),
                     "exemplar_distances": distances[near].astype(float).tolist()})
    return rows


def entropy_bits(shares: Sequence[float]) -> float:
    s = np.asarray([x for x in shares if x > 0], dtype=np.float64)
    return float(-(s * np.log2(s)).sum()) if len(s) else 0.0


def concept_table(layer: str, centroids: np.ndarray, counts: Sequence[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """atlas/concepts rows (one per global concept of the layer: size, videos, the classes it
    occurs in with their shares of its members, its class entropy in bits) and
    atlas/class_concepts rows (per class and concept: members, share of the class's vectors,
    share of the concept's, the class's exemplars), from the partitions' counts."""
    by_concept: dict[int, list[dict[str, Any]]] = {}
    class_total: dict[str, int] = {}
    for r in counts:
        by_concept.setdefault(r["global_concept"], []).append(r)
        class_total[r["target_class"]] = class_total.get(r["target_class"], 0) + r["members"]
    concepts, cells = [], []
    for g in range(len(centroids)):
        rows = sorted(by_concept.get(g, []), key=lambda r: (-r["members"], r["target_class"]))
        size = sum(r["members"] for r in rows)
        shares = [r["members"] / size for r in rows] if size else []
        concepts.append({"layer": layer, "global_concept": g, "size": size,
                         "num_videos": sum(r["videos"] for r in rows), "num_classes": len(rows),
                         "classes": [r["target_class"] for r in rows],
                         "class_shares": [round(s, 6) for s in shares], "class_entropy": round(entropy_bits(shares), 6),
                         "top_class": rows[0]["target_class"] if rows else None,
                         "top_class_share": round(shares[0], 6) if rows else None,
                         "centroid": centroids[g].tolist()})
        for r, s in zip(rows, shares):
            cells.append({"target_class": r["target_class"], "layer": layer, "global_concept": g,
                          "members": r["members"], "videos": r["videos"],
                          "share_of_class": round(r["members"] / class_total[r["target_class"]], 6),
                          "share_of_concept": round(s, 6),
                          **{f: r[f] for f in ("exemplar_video_ids", "exemplar_supervoxel_ids", "exemplar_distances")}})
    return concepts, cells


def concept_links(members: Sequence[dict[str, Any]], global_of: dict[tuple[str, int], int]) -> list[dict[str, Any]]:
    """Per class concept (rows of concept_members), the global concepts its members fall
    into: members and share, largest first."""
    counts: dict[tuple[str, str, str], dict[int, int]] = {}
    for m in members:
        g = global_of.get((m["video_id"], int(m["supervoxel_id"])))
        if g is not None:
            into = counts.setdefault((m["target_class"], m["layer"], m["concept"]), {})
            into[g] = into.get(g, 0) + 1
    rows = []
    for (k, layer, concept), by_g in sorted(counts.items()):
        total = sum(by_g.values())
        for g, n in sorted(by_g.items(), key=lambda x: (-x[1], x[0])):
            rows.append({"target_class": k, "layer": layer, "concept": concept, "global_concept": g, "members": n,
                         "share": round(n / total, 6)})
    return rows


def actor_placements(actor: dict[tuple[str, str], str], links: Sequence[dict[str, Any]],
                     concepts: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Where each (class, layer)'s actor concept (`actor`: its name) falls in the atlas:
    {class: {layer: {"actor_concept", **placement}}}, from the rows of atlas/concept_links
    (`links`) and atlas/concepts.parquet (`concepts`)."""
    split: dict[str, list[tuple[int, float]]] = {}
    for row in links:
        split.setdefault(row["concept"], []).append((row["global_concept"], row["share"]))
    classes_of: dict[str, dict[int, dict[str, float]]] = {}
    for c in concepts:
        classes_of.setdefault(c["layer"], {})[c["global_concept"]] = dict(zip(c["classes"], c["class_shares"]))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (k, layer), concept in sorted(actor.items()):
        if concept in split and layer in classes_of:
            shares = sorted(split[concept], key=lambda gs: -gs[1])  # largest first; equal ones as written
            out.setdefault(k, {})[layer] = {"actor_concept": concept, **placement(k, shares, classes_of[layer])}
    return out


def placement(target_class: str, shares: Sequence[tuple[int, float]], classes_of: dict[int, dict[str, float]],
              top: int = 3) -> dict[str, Any]:
    """Where a concept of class k falls in the atlas: its largest global concepts (`shares`:
    (global concept, share of the concept's members), largest first) with the classes of each,
    and other_classes_share: over its members, the mean share of other classes among the
    members of the global concept each falls in (0: its global concepts are k's alone)."""
    other = sum(share * (1.0 - classes_of.get(g, {}).get(target_class, 0.0)) for g, share in shares)
    return {"global_concepts": [{"global_concept": int(g), "share": round(float(share), 4),
                                 "classes": {c: round(v, 4) for c, v in classes_of.get(g, {}).items()}}
                                for g, share in shares[:top]],
            "other_classes_share": round(float(other), 4)}
