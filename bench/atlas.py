"""The atlas's two FAISS pieces against their baselines, side by side in one process, on
synthetic clustered vectors (--n of them, --dim dimensions, --clusters Gaussian clusters):

1. k-means at K = --k (default sqrt(N), as the atlas chooses): the atlas's build
   (`pipeline.atlas.build.train` with its defaults, on its uniform sample of K x
   max_points_per_centroid) against scikit-learn's MiniBatchKMeans at the same K with its
   defaults (fit, without labelling every vector: both need the same assignment afterwards,
   timed once). Quality: each one's inertia on all N vectors (the sum of squared distances to
   the nearest centroid).
2. search: the atlas's IVF-Flat index (its lists are the k-means centroids) against exact FAISS
   flat search, over --queries held-out vectors: recall@10 and queries per second (batched),
   at the smallest nprobe that reaches recall 0.95. IVF-SQ8's and IVF-PQ's figures (the indexes
   for 100 M vectors and more) are printed beside it.

The last line:
  kmeans_speedup=<sklearn s / FAISS s> inertia_ratio=<FAISS / sklearn> recall_at_10=<IVF-Flat>
  qps_ratio=<IVF-Flat / flat>
Targets: >= 5 with the inertias within 2% of each other (or FAISS's lower), >= 0.95, >= 10.

  python bench/atlas.py                       # 1,000,000 x 192
  python bench/atlas.py --n 100000 --dim 64   # a quick look
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def clustered(n: int, d: int, clusters: int, seed: int) -> np.ndarray:
    """n vectors around `clusters` random centres (unequal sizes and spreads), float32."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d), dtype=np.float32) * 3.0
    weights = rng.dirichlet(np.full(clusters, 2.0))
    spread = rng.uniform(0.5, 1.5, clusters).astype(np.float32)
    x = np.empty((n, d), dtype=np.float32)
    for i in range(0, n, 100_000):
        m = min(100_000, n - i)
        c = rng.choice(clusters, size=m, p=weights)
        x[i:i + m] = centres[c] + rng.standard_normal((m, d), dtype=np.float32) * spread[c, None]
    return x


def inertia(x: np.ndarray, centroids: np.ndarray) -> float:
    from pipeline.atlas import build

    return sum_of_squares(build.assign(x, np.ascontiguousarray(centroids, dtype=np.float32))[1])


def sum_of_squares(dist: np.ndarray) -> float:
    return float(np.square(dist.astype(np.float64)).sum())


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def qps(index, q: np.ndarray, k: int, repeats: int = 3) -> tuple[float, np.ndarray]:
    best, ids = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, ids = index.search(q, k)
        best = min(best, time.perf_counter() - t0)
    return len(q) / best, ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--k", type=int, default=0, help="k-means K (0: round(sqrt(n)), as the atlas)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import faiss
    from sklearn.cluster import MiniBatchKMeans

    from pipeline.atlas import build
    from pipeline.atlas.params import AtlasParams

    t0 = time.perf_counter()
    data = clustered(args.n + args.queries, args.dim, args.clusters, args.seed)
    x, queries = data[:args.n], np.ascontiguousarray(data[args.n:])
    p = AtlasParams(k=args.k, seed=args.seed)
    k = build.choose_k(args.n, p) if not args.k else args.k
    print(f"{args.n} vectors x {args.dim} ({args.clusters} clusters), K = {k}, {faiss.omp_get_max_threads()} "
          f"threads; data made in {time.perf_counter() - t0:.1f} s", flush=True)

    # 1. k-means: the atlas's build (sample, seed, train) against MiniBatchKMeans's fit, each
    #    without labelling every vector (the same work for both: timed once, for FAISS)
    t0 = time.perf_counter()
    rows = build.sample_rows(args.n, build.sample_size(args.n, k, p), args.seed, 0)
    trained = build.train(np.ascontiguousarray(x[rows]), k, p, gpu=False)
    t_faiss = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, dist = build.assign(x, trained["centroids"])
    t_assign = time.perf_counter() - t0
    i_faiss = sum_of_squares(dist)  # the assignment just timed gives the inertia
    print(f"FAISS k-means (the atlas's defaults): {t_faiss:.1f} s on a sample of {len(rows)} vectors ({p.niter} "
          f"iterations, {p.init} seeding on {min(len(rows), max(p.init_points, 3 * k))}); inertia {i_faiss:.4e}; every "
          f"vector assigned in {t_assign:.1f} s more", flush=True)
    t0 = time.perf_counter()
    mbk = MiniBatchKMeans(n_clusters=k, random_state=args.seed, compute_labels=False).fit(x)
    t_sk = time.perf_counter() - t0
    i_sk = inertia(x, mbk.cluster_centers_)
    print(f"scikit-learn MiniBatchKMeans (its defaults: batch 1024, k-means++ on 3,072): {t_sk:.1f} s "
          f"({mbk.n_steps_} steps); inertia {i_sk:.4e}", flush=True)
    ratio = i_faiss / i_sk
    print(f"k-means: FAISS {t_sk / t_faiss:.1f}x faster, inertia FAISS / sklearn {ratio:.4f}", flush=True)
    del mbk

    # 2. search: IVF-Flat over the atlas's centroids against exact flat search
    flat = faiss.IndexFlatL2(args.dim)
    flat.add(x)
    q_flat, truth = qps(flat, queries, 10)
    print(f"flat (exact): {q_flat:.0f} queries/s", flush=True)
    del flat
    t0 = time.perf_counter()
    ivf = build.empty_index(trained["centroids"], x[rows], build.IVF_FLAT, p)
    ivf.add_with_ids(x, np.arange(args.n, dtype=np.int64))
    print(f"IVF-Flat ({k} lists): built in {time.perf_counter() - t0:.1f} s, "
          f"{build.bytes_per_vector(build.IVF_FLAT, args.dim, p)} bytes per vector", flush=True)
    chosen = None
    for nprobe in (1, 2, 4, 8, 16, 32, 64, 128):
        ivf.nprobe = nprobe
        q, found = qps(ivf, queries, 10)
        r = recall_at(found, truth)
        print(f"  nprobe {nprobe:4d}: recall@10 {r:.4f}, {q:.0f} queries/s ({q / q_flat:.1f}x flat)", flush=True)
        if chosen is None and r >= 0.95:
            chosen = (nprobe, r, q)
    if chosen is None:
        chosen = (nprobe, r, q)
    del ivf
    for kind, name in ((build.IVF_SQ8, "IVF-SQ8"), (build.IVF_PQ, f"IVF-PQ, {build.pq_bytes(args.dim, p)} code bytes")):
        t0 = time.perf_counter()
        other = build.empty_index(trained["centroids"], x[rows], kind, p)
        other.add(x)
        other.nprobe = chosen[0]
        q, found = qps(other, queries, 10)
        print(f"{name} ({build.bytes_per_vector(kind, args.dim, p)} bytes per vector; built in "
              f"{time.perf_counter() - t0:.1f} s): nprobe {chosen[0]}: recall@10 {recall_at(found, truth):.4f}, "
              f"{q:.0f} queries/s", flush=True)
        del other
    print(f"kmeans_speedup={t_sk / t_faiss:.2f} inertia_ratio={ratio:.4f} recall_at_10={chosen[1]:.4f} "
          f"qps_ratio={chosen[2] / q_flat:.1f}")


if __name__ == "__main__":
    main()
