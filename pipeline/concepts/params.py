"""The concept stage's parameter set (method steps 5-8): discovery, CAVs, TCAV, significance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from pipeline.params import require

RULES = ("3dace", "ace")
CAV_MODELS = ("torch", "fastcav", "sgd", "logistic")
USER = "user:"  # a trainer handed over from Python (pipeline.scoring.trainers)
CORRECTIONS = ("none", "holm")


@dataclass
class StabilityParams:
    """Concept stability (`concepts.stability`): discovery rerun on `resamples` bootstrap
    resamples of the discovery videos (seeded; 0: off). A concept reappears in a resample when,
    matched one-to-one to the resample's concepts, at least `overlap` of its members still
    there fall in its match's cluster (`pipeline.concepts.stability`)."""

    resamples: int = 5
    overlap: float = 0.5

    def check(self) -> None:
        require(self.resamples >= 0, "stability.resamples", self.resamples, "must be >= 0 (0: off)")
        require(0 < self.overlap <= 1, "stability.overlap", self.overlap, "must be in (0, 1]")


@dataclass
class ConceptParams:
    """Concept discovery and TCAV scoring, per class and layer (the config group `concepts`).

    discovery_fraction: share of a class's videos used for discovery; the rest score it.
    k, niter, nredo: FAISS k-means (clusters, iterations, best of nredo runs). The reference
        uses K = 25.
    rules: acceptance rules, `3dace` (0.4 / 0.1,0.1 / 0.08,0.35) or `ace` (0.5 / 0.25,0.25 /
        0.1,0.5). min_videos: a cluster needs more members than this; max_videos: members a
        concept keeps (nearest the centre).
    num_random_exp: random sets (of random_set_size whole clips of other classes' videos),
        plus one extra set for the random-vs-random baseline.
    cav_model: torch (the reference SGDClassifier's algorithm, run for all of a class's CAVs at
        once in torch) | fastcav (closed form: the concept's mean minus the pair's mean, no
        training) | sgd (sklearn's SGDClassifier, one fit per CAV) | logistic |
        user:<name>@<digest> (a trainer of one's own, handed to
        `pipeline.explain(cav_trainer=...)`: `pipeline.scoring.trainers.CavTrainer`).
    cav_alpha: the L2 penalty (torch and sgd).
    p_threshold, correction (none | holm): when a concept is significant.
    randomisation_check: score the same CAVs again on gradients from the model with every
        weight after the layer re-initialised, and report how much the ranking moves.
    seed: the seed of the split, the random sets, k-means and the CAV fits (and the resamples).
    stability: concept stability across bootstrap resamples (`StabilityParams`).
    user: a table of the user's own concepts (Parquet or CSV: concept, video_id, supervoxel_id,
        optionally target_class), explained beside the discovered ones (`pipeline.concepts.user`);
        empty: none.
    """

    discovery_fraction: float = 0.5
    k: int = 25
    niter: int = 20
    nredo: int = 5
    rules: str = "3dace"
    min_videos: int = 5
    max_videos: int = 40
    num_random_exp: int = 20
    random_set_size: int = 40
    cav_model: str = "torch"
    cav_alpha: float = 0.01
    p_threshold: float = 0.01
    correction: str = "none"
    randomisation_check: bool = False
    seed: int = 0
    stability: StabilityParams = field(default_factory=StabilityParams)
    user: Optional[str] = None

    def __post_init__(self) -> None:
        if isinstance(self.stability, dict):  # from a plain config section
            self.stability = StabilityParams(**self.stability)

    def check(self) -> None:
        """Raise ParameterError naming the first field out of range."""
        require(0 < self.discovery_fraction < 1, "discovery_fraction", self.discovery_fraction, "must be in (0, 1)")
        for name in ("k", "niter", "nredo", "num_random_exp", "random_set_size", "max_videos"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        require(self.num_random_exp >= 2, "num_random_exp", self.num_random_exp,
                "must be >= 2 (the t-test pairs the random sets)")
        require(self.min_videos >= 0, "min_videos", self.min_videos, "must be >= 0")
        require(self.rules in RULES, "rules", self.rules, "must be 3dace or ace")
        require(self.cav_model in CAV_MODELS or self.cav_model.startswith(USER), "cav_model",
                self.cav_model, f"must be torch, fastcav, sgd, logistic or {USER}<name> (a trainer "
                "handed to pipeline.explain(cav_trainer=...))")
        require(self.correction in CORRECTIONS, "correction", self.correction, "must be none or holm")
        require(0 < self.p_threshold < 1, "p_threshold", self.p_threshold, "must be in (0, 1)")
        self.stability.check()
