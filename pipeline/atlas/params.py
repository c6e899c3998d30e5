"""The atlas stage's parameter set (the config group `atlas`)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.params import require

INDEXES = ("auto", "ivf_flat", "ivf_sq8", "ivf_pq")
DEVICES = ("auto", "cpu", "gpu")
INITS = ("kmeans||", "kmeans++", "random")


@dataclass
class AtlasParams:
    """The global concept atlas: one FAISS k-means per explained layer over every kept
    supervoxel vector of the corpus, and a search index over the same vectors.

    k: global concepts per layer; 0 (the default) scales it to the layer's vectors N,
        round(sqrt(N)) within [k_min, k_max] (and at most N / min_points_per_centroid).
    max_points_per_centroid: the training sample holds at most k times this many vectors,
        drawn uniformly from the whole layer (seeded); every vector is then assigned.
    niter, nredo: k-means iterations, and runs (the best is kept).
    init: kmeans|| (four sampling passes over init_points of the sample, at least 3 k, then
        greedy k-means++ on the weighted candidates) | kmeans++ (greedy, on those points
        themselves) | random (FAISS's own: k random vectors). The seeding decides the quality:
        on bench/atlas.py's 1 M clustered vectors, random seeding ends at twice the inertia,
        k-means++ on 50,000 points 1.6% above scikit-learn's MiniBatchKMeans after 3.9 s of
        seeding, k-means|| 1.4% above after about 1 s.
    spherical: cluster and search L2-normalised vectors (cosine geometry); False: the raw
        vectors, as the per-class concepts are found.
    index: auto | ivf_flat | ivf_sq8 | ivf_pq. The index's inverted lists are the atlas's own
        concepts. IVF-Flat keeps 4 bytes per dimension per vector (exact distances within the
        lists searched), IVF-SQ8 1 byte, IVF-PQ pq_bytes per vector. auto: IVF-Flat while the
        layer's vectors take at most index_flat_max_gb, else IVF-PQ.
    pq_bytes: bytes per vector of IVF-PQ's codes (0: a quarter of the dimension; it must
        divide the dimension).
    nprobe: inverted lists searched per query (at most k).
    device: auto | cpu | gpu, where k-means trains (auto: the GPU when the cluster and FAISS
        have one).
    seed: the sample's and k-means' seed.
    """

    k: int = 0
    k_min: int = 8
    k_max: int = 4096
    min_points_per_centroid: int = 20
    max_points_per_centroid: int = 128
    niter: int = 10
    nredo: int = 1
    init: str = "kmeans||"
    init_points: int = 50000
    spherical: bool = False
    index: str = "auto"
    index_flat_max_gb: float = 16.0
    pq_bytes: int = 0
    nprobe: int = 16
    device: str = "auto"
    seed: int = 0

    def check(self) -> None:
        """Raise ParameterError naming the first field out of range."""
        require(self.k >= 0, "k", self.k, "must be >= 0 (0: scaled to the number of vectors)")
        for name in ("k_min", "k_max", "min_points_per_centroid", "max_points_per_centroid", "niter", "nredo",
                     "nprobe"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        require(self.k_max >= self.k_min, "k_max", self.k_max, f"must be >= k_min ({self.k_min})")
        require(self.max_points_per_centroid >= self.min_points_per_centroid, "max_points_per_centroid",
                self.max_points_per_centroid, f"must be >= min_points_per_centroid ({self.min_points_per_centroid})")
        require(self.init in INITS, "init", self.init, f"must be one of {list(INITS)}")
        require(self.init_points >= 1, "init_points", self.init_points, "must be >= 1")
        require(self.index in INDEXES, "index", self.index, f"must be one of {list(INDEXES)}")
        require(self.index_flat_max_gb > 0, "index_flat_max_gb", self.index_flat_max_gb, "must be > 0")
        require(self.pq_bytes >= 0, "pq_bytes", self.pq_bytes, "must be >= 0 (0: a quarter of the dimension)")
        require(self.device in DEVICES, "device", self.device, f"must be one of {list(DEVICES)}")
