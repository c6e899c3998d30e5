"""Concept discovery: FAISS k-means and the acceptance rules on planted clusters."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.concepts.discovery import RULE_PRESETS, accept, discover_concepts


def _planted(seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (3, 16))
    tight = [centres[i] + rng.normal(0, 0.5, (40, 16)) for i in range(3)]  # 40 members, 10 videos each
    x = np.concatenate(tight)
    videos = [f"v{i % 10}" for i in range(len(x))]
    return x, videos


def test_planted_clusters_become_concepts_with_radius_and_nearest_members_first():
    x, videos = _planted()
    d = discover_concepts(x, videos, num_discovery_videos=10, k=3, min_videos=5, max_videos=25, seed=3)
    assert d.k == 3 and len(d.concepts) == 3
    groups = sorted(tuple(sorted(set(c.members // 40))) for c in d.concepts)
    assert groups == [(0,), (1,), (2,)]  # each concept is one planted cluster
    for c in d.concepts:
        assert len(c.members) == 25 and c.num_videos == 10  # capped at max_videos, nearest kept
        assert np.all(np.diff(c.distances) >= 0) and c.radius == pytest.approx(float(c.distances.max()))
        assert c.radius <= np.sort(d.distances[d.assignment == c.cluster])[24] + 1e-5


def test_rule_presets_differ_as_the_papers_say():
    # One cluster: 20 members from 3 of 10 videos. 3D ACE: n=3 > 0.1*20 and n > 0.1*10 -> concept.
    # ACE: 3 > 0.25*20 fails, 3 > 0.1*20 but 3 > 0.5*10 fails -> not a concept.
    assignment = np.zeros(20, dtype=np.int64)
    distances = np.linspace(0, 1, 20)
    videos = [f"v{i % 3}" for i in range(20)]
    centroids = np.zeros((1, 4), np.float32)
    assert len(accept(assignment, distances, centroids, videos, 10, RULE_PRESETS["3dace"], 5, 40)) == 1
    assert len(accept(assignment, distances, centroids, videos, 10, RULE_PRESETS["ace"], 5, 40)) == 0
    # No more members than min_videos: never a concept.
    assert accept(assignment[:5], distances[:5], centroids, videos[:5], 10, RULE_PRESETS["3dace"], 5, 40) == []


def test_k_shrinks_with_few_vectors_and_says_so():
    x, videos = _planted()
    d = discover_concepts(x[:7], videos[:7], num_discovery_videos=10, k=25, min_videos=1)
    assert d.k == 7 and "K shrinks from 25 to 7" in d.notes[0]
    with pytest.raises(ValueError, match="unknown acceptance rules"):
        discover_concepts(x, videos, 10, rules="tcav")


def test_a_planted_concept_is_stable_across_resamples_and_noise_is_not():
    from pipeline.concepts.discovery import discover_concepts
    from pipeline.concepts.params import ConceptParams, StabilityParams
    from pipeline.concepts.stability import concept_stability, resample_rows

    rng = np.random.default_rng(4)
    dim, videos = 16, 20
    planted = np.zeros(dim)
    planted[0] = 8.0
    vectors, ids = [], []
    for v in range(videos):  # every video: 3 supervoxels of the planted concept, 12 of diffuse noise
        vectors += [planted + rng.normal(0, 0.3, dim) for _ in range(3)] + [rng.normal(0, 1.0, dim) for _ in range(12)]
        ids += [f"v{v:02d}"] * 15
    vectors = np.asarray(vectors, dtype=np.float32)
    rows, pseudo = resample_rows(ids, seed=0, b=0)
    assert len(set(pseudo)) == videos and len(rows) == 15 * videos  # every draw keeps a video's rows together
    params = ConceptParams(k=8, min_videos=3, stability=StabilityParams(resamples=5))
    discovery = discover_concepts(vectors, ids, videos, k=8, rules=params.rules, min_videos=3,
                                  max_videos=params.max_videos, seed=0, niter=params.niter, nredo=params.nredo)
    stability = concept_stability(vectors, ids, discovery, params)
    planted_index = int(np.argmax([np.linalg.norm(c.centroid - planted) < 2 for c in discovery.concepts]))
    assert np.linalg.norm(discovery.concepts[planted_index].centroid - planted) < 2
    assert stability[planted_index] == 1.0
    others = [s for i, s in enumerate(stability) if i != planted_index]
    assert others and np.mean(others) < 1.0  # clusters cut out of diffuse noise move between resamples
    assert concept_stability(vectors, ids, discovery, ConceptParams(stability=StabilityParams(resamples=0))) == [
        pytest.approx(float("nan"), nan_ok=True)] * len(discovery.concepts)
