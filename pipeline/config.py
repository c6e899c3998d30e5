"""The configuration schema: one dataclass per config group.

Hydra composes `conf/` on top of these dataclasses, so an unknown key or a value of the
wrong type fails at composition time with a message naming the key. `validate` adds the
checks a type cannot express (ranges, choices, files that must exist) and runs in the
driver before any work starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


# conf/ sits beside the package (an editable install, a source checkout, a Ray working_dir).
CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")


class ConfigError(ValueError):
    """A config key holds a value the pipeline cannot run with; the message names the key."""


@dataclass
class SyntheticConfig:
    """Parameters of the synthetic benchmark corpus (see `pipeline.data.synthetic`)."""

    videos_per_class: int = 24  # per class, all splits together
    num_frames: int = 16
    size: int = 112  # frames are size x size pixels
    fps: int = 8
    num_distractors: int = 3
    seed: int = 0


@dataclass
class DatasetConfig:
    """Where the videos come from.

    kind: `synthetic` (generated on first use under `root`), `folder`
    (`root/<class>/<video>.<ext>`) or `csv` (Kinetics-style annotations: `csv` file with
    columns label,youtube_id,time_start,time_end,split; each row's file is
    `root/<path_template>`).
    """

    name: str = MISSING
    kind: str = MISSING
    root: Optional[str] = None
    csv: Optional[str] = None
    path_template: str = "{split}/{label}/{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"
    extensions: list[str] = field(default_factory=lambda: [".mp4", ".avi", ".mkv", ".webm", ".mov"])
    classes: Optional[list[str]] = None  # restrict to these classes (None: all)
    splits: Optional[list[str]] = None  # restrict to these splits (csv only; None: all)
    max_videos_per_class: Optional[int] = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class ClipConfig:
    """How a clip is sampled from a video and resized (method step 1).

    num_frames: frames in the clip (may exceed the model window).
    frame_stride: take every `frame_stride`-th decoded frame (ignored when `fps` is set).
    fps: resample to this frame rate (None: use `frame_stride`).
    start: `centre` | `start` | a time in seconds where the clip begins (as a string or
        number); for csv corpora `start` is taken relative to `time_start`.
    height, width: every frame is resized to this size (pixels).
    """

    num_frames: int = 16
    frame_stride: int = 1
    fps: Optional[float] = None
    start: str = "centre"
    height: int = 112
    width: int = 112


@dataclass
class SegmentConfig:
    """Supervoxels (method step 2; see `pipeline.segmentation.supervoxels.segment_clip`).

    n_segments: SLIC's approximate supervoxel count per resolution, coarsest first (the
        dedupe order). The reference uses [15, 50, 80].
    compactness: SLIC's colour/space balance. sigma: Gaussian smoothing in voxels.
    spacing: voxel spacing (t, y, x) for SLIC's distances; a larger t gives shorter supervoxels.
    min_volume_fraction: candidates below this fraction of the clip volume are dropped.
    iou_threshold: a candidate with voxel IoU above this with a kept supervoxel is dropped.
    short_supervoxels: what becomes of a supervoxel spanning fewer frames than the model window:
        `drop` (the reference: marked dropped_short) or `pad` (kept; its patch is the one
        T-frame window of the clip centred on it, the frames it does not reach filled whole).
    videos_per_part: videos per Parquet part file (a part is the unit of resume).
    """

    n_segments: list[int] = field(default_factory=lambda: [15, 50, 80])
    compactness: float = 20.0
    sigma: float = 1.0
    spacing: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    min_volume_fraction: float = 0.001
    iou_threshold: float = 0.5
    max_num_iter: int = 10
    short_supervoxels: str = "drop"
    videos_per_part: int = 64


@dataclass
class ActivateConfig:
    """Activations (method steps 3-4) in actors that hold the model.

    batch_size: windows per forward call (0: the device's default, 4 on a CPU, where it was
        about the fastest for the demo model here, 32 on a GPU).
    measure_batch: each actor measures batch sizes 1, 2, 4, ... on its device and takes the
        fastest per window that fits in memory. Off by default: the choice depends on timing,
        and the batch size changes the model's floating-point sums, so outputs would differ
        from run to run in the last bits (enough to move a k-means boundary).
    num_actors: model actors (null: one per GPU, or one CPU actor where there is no GPU).
    cpus_per_actor: CPUs a CPU actor reserves; torch_threads: its torch threads (0: the node's
        cores, since the stages run one after the other).
    fill: the mean pixel (0-255) put outside a supervoxel. resampling: bicubic | bilinear.
    autocast: the model in bf16 (autocast; its patches built in bf16). null: where the device runs
        bf16 natively, a GPU or a CPU with AVX512-BF16/AMX (on this 2-core CPU the demo model's
        forward ran 1.7x faster); true/false: always/never. gradients: class-logit gradients for
        whole clips.
    channels_last: weights and batches in channels_last_3d (null: on a GPU only). On this 2-core
        CPU it made x3d_m's forward 1.6x faster and the demo model's activation path 1.1x slower.
    """

    batch_size: int = 0
    measure_batch: bool = False
    num_actors: Optional[int] = None
    cpus_per_actor: int = 1
    torch_threads: int = 0
    fill: float = 117.0
    resampling: str = "bicubic"
    autocast: Optional[bool] = None
    gradients: bool = True
    channels_last: Optional[bool] = None
    videos_per_part: int = 64


@dataclass
class ConceptsConfig:
    """Concept discovery and TCAV scoring (method steps 5-8), per class and layer.

    discovery_fraction: share of a class's videos used for discovery; the rest score it.
    k, niter, nredo: FAISS k-means (clusters, iterations, best of nredo runs).
    rules: acceptance rules, `3dace` (0.4 / 0.1,0.1 / 0.08,0.35) or `ace` (0.5 / 0.25,0.25 / 0.1,0.5).
    min_videos: a cluster needs more members than this; max_videos: members a concept keeps.
    num_random_exp: random sets (of random_set_size whole clips of other classes' videos),
        plus one extra set for the random-vs-random baseline.
    cav_model: torch (the reference SGDClassifier's algorithm, run for all of a class's CAVs at
        once in torch; sklearn's answers without shuffling) | sgd (sklearn's SGDClassifier, one
        fit per CAV) | logistic; cav_alpha: the L2 penalty.
    p_threshold, correction (none | holm): when a concept is significant.
    randomisation_check: score the same CAVs again on gradients from the model with every
        weight after the layer re-initialised, and report how much the ranking moves.
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


@dataclass
class ModelConfig:
    """Which model to explain (see `pipeline.models.registry`).

    name: a registry name (`demo`, `x3d_m`, `r3d_18`, ...) or `checkpoint`, `torchscript`,
        `factory`.
    path: the checkpoint / TorchScript file (for `checkpoint`, `torchscript`).
    factory: `module:function` returning an `nn.Module` (for `factory`).
    pretrained: load the registry's published weights through the framework's cache.
    layers: layers to explain (module names); empty: the registry's recommended layers.
    class_names: overrides the class names the model carries.
    window: model input frames T; height/width its input size (0: the registry's).
    mean/std: input normalisation on the 0-1 scale (empty: the registry's).
    """

    name: str = "demo"
    path: Optional[str] = None
    factory: Optional[str] = None
    pretrained: bool = False
    layers: list[str] = field(default_factory=list)
    class_names: Optional[list[str]] = None
    window: int = 0
    height: int = 0
    width: int = 0
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class RayConfig:
    """How to reach Ray. address None starts an embedded local cluster.

    cpu_label_selector: Ray node labels the CPU stages' tasks (ingest, segment) must match, as
    `key:value` strings, e.g. [ace3d-node:cpu] on a cluster made with cluster.yaml, so that
    segmentation stays off the GPU nodes (Ray only prefers to). Empty: any node. The job stops
    before any work when no node matches.
    """

    address: Optional[str] = None
    num_cpus: Optional[int] = None
    object_store_memory: Optional[int] = None
    include_dashboard: bool = False
    cpu_label_selector: list[str] = field(default_factory=list)


@dataclass
class EvaluateConfig:
    """The paper's deletion/insertion experiments and causal concept importance (method step
    10), on the scoring videos of every class, per explained layer.

    max_k: curves run k = 0 .. min(concepts, max_k); random_draws: seeded random orders per
    curve. Removed voxels get the mean pixel `activate.fill`.
    """

    max_k: int = 10
    random_draws: int = 3
    seed: int = 0


@dataclass
class ReportConfig:
    """report/index.html (the `report` stage, or `python -m pipeline.report run_dir=...`).

    exemplars: looping clips per concept card (the members nearest the centroid);
    max_concepts: cards per (class, layer), in rank order; heatmap_videos: scoring videos per
    class shown with their voxel-importance maps; format: webp | gif (the animations);
    frame_ms: how long each frame shows.
    """

    exemplars: int = 3
    max_concepts: int = 12
    heatmap_videos: int = 2
    format: str = "webp"
    frame_ms: int = 125


@dataclass
class RunConfig:
    """Where the outputs go and what the job does.

    output_dir: the run folder (relative paths are taken from the current directory).
    stages: the stages to run, in order.
    """

    output_dir: str = "outputs/${dataset.name}-${model.name}"
    seed: int = 0
    stages: list[str] = field(default_factory=lambda: ["ingest", "segment", "activate", "concepts", "evaluate",
                                                                 "report"])
    log_level: str = "INFO"


@dataclass
class TrainConfig:
    """`python -m pipeline.train`: fit a model on a corpus, print held-out accuracy."""

    output: Optional[str] = None  # where the checkpoint goes (None: nothing is written)
    epochs: int = 20
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    holdout_fraction: float = 0.25
    seed: int = 0
    num_threads: int = 0  # torch threads (0: torch's default)


@dataclass
class Config:
    dataset: DatasetConfig = MISSING
    clip: ClipConfig = field(default_factory=ClipConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    activate: ActivateConfig = field(default_factory=ActivateConfig)
    concepts: ConceptsConfig = field(default_factory=ConceptsConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    run: RunConfig = field(default_factory=RunConfig)


@dataclass
class TrainJobConfig(Config):
    train: TrainConfig = field(default_factory=TrainConfig)


STAGES = ("ingest", "segment", "activate", "concepts", "evaluate", "report")
DATASET_KINDS = ("synthetic", "folder", "csv")


def register_configs() -> None:
    """Register the schemas so `conf/*.yaml` are checked against them."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(name="train_schema", node=TrainJobConfig)
    cs.store(group="dataset", name="dataset_schema", node=DatasetConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="ray", name="ray_schema", node=RayConfig)
    cs.store(group="segment", name="segment_schema", node=SegmentConfig)
    if not OmegaConf.has_resolver("local_dir"):
        OmegaConf.register_new_resolver("local_dir", local_dir)


def local_dir(output_dir: str) -> str:
    """Where Hydra keeps its own files (.hydra/): the run folder itself, or, for a run written
    to a filesystem URI (s3://...), a local folder named after it under outputs/remote/."""
    if "://" not in str(output_dir):
        return str(output_dir)
    import re

    return os.path.join("outputs", "remote", re.sub(r"[^A-Za-z0-9._-]+", "_", str(output_dir)).strip("_"))


def _fail(key: str, value: Any, why: str) -> None:
    raise ConfigError(f"config key '{key}' = {value!r}: {why}")


def validate_report(rep: Any) -> None:
    """The report's settings (a ReportConfig, DictConfig or plain dict)."""
    get = rep.get if isinstance(rep, dict) else lambda k: getattr(rep, k)
    for key in ("exemplars", "max_concepts", "heatmap_videos"):
        if get(key) < 0:
            _fail(f"report.{key}", get(key), "must be >= 0")
    if get("format") not in ("webp", "gif"):
        _fail("report.format", get("format"), "must be webp or gif")
    if get("frame_ms") < 10:
        _fail("report.frame_ms", get("frame_ms"), "must be >= 10 (milliseconds per frame)")


def validate(cfg: DictConfig | Config) -> None:
    """Check what the schema's types cannot: ranges, choices, files that must exist.

    Raises ConfigError naming the first bad key.
    """
    c = cfg
    ds = c.dataset
    if ds.kind not in DATASET_KINDS:
        _fail("dataset.kind", ds.kind, f"must be one of {list(DATASET_KINDS)}")
    if ds.kind in ("folder", "csv"):
        if not ds.root:
            _fail("dataset.root", ds.root, f"a {ds.kind} corpus needs its root folder (dataset.root=/abs/path)")
        if not os.path.isdir(ds.root):
            _fail("dataset.root", ds.root, "no such folder")
    if ds.kind == "csv":
        if not ds.csv:
            _fail("dataset.csv", ds.csv, "a csv corpus needs its annotation file")
        if not os.path.isfile(ds.csv):
            _fail("dataset.csv", ds.csv, "no such file")
    if ds.max_videos_per_class is not None and ds.max_videos_per_class < 1:
        _fail("dataset.max_videos_per_class", ds.max_videos_per_class, "must be >= 1")
    syn = ds.synthetic
    if syn.videos_per_class < 2:
        _fail("dataset.synthetic.videos_per_class", syn.videos_per_class, "must be >= 2")
    if syn.num_frames < 4:
        _fail("dataset.synthetic.num_frames", syn.num_frames, "must be >= 4")
    if syn.size < 32:
        _fail("dataset.synthetic.size", syn.size, "must be >= 32")

    clip = c.clip
    for key in ("num_frames", "frame_stride", "height", "width"):
        if getattr(clip, key) < 1:
            _fail(f"clip.{key}", getattr(clip, key), "must be >= 1")
    if clip.fps is not None and clip.fps <= 0:
        _fail("clip.fps", clip.fps, "must be > 0")
    if str(clip.start) not in ("centre", "center", "start"):
        try:
            if float(clip.start) < 0:
                raise ValueError
        except ValueError:
            _fail("clip.start", clip.start, "must be 'centre', 'start' or a time in seconds >= 0")

    seg = c.segment
    if not seg.n_segments or min(seg.n_segments) < 1:
        _fail("segment.n_segments", list(seg.n_segments), "must be a non-empty list of positive integers")
    if seg.compactness <= 0:
        _fail("segment.compactness", seg.compactness, "must be > 0")
    if seg.sigma < 0:
        _fail("segment.sigma", seg.sigma, "must be >= 0")
    if len(seg.spacing) != 3 or min(seg.spacing) <= 0:
        _fail("segment.spacing", list(seg.spacing), "must be 3 positive numbers (t, y, x)")
    if not 0 <= seg.min_volume_fraction < 1:
        _fail("segment.min_volume_fraction", seg.min_volume_fraction, "must be in [0, 1)")
    if not 0 <= seg.iou_threshold <= 1:
        _fail("segment.iou_threshold", seg.iou_threshold, "must be in [0, 1]")
    if c.evaluate.max_k < 1:
        _fail("evaluate.max_k", c.evaluate.max_k, "must be >= 1")
    if c.evaluate.random_draws < 1:
        _fail("evaluate.random_draws", c.evaluate.random_draws, "must be >= 1")
    validate_report(c.report)
    for i, item in enumerate(c.ray.cpu_label_selector):
        if ":" not in item or not item.split(":", 1)[0] or not item.split(":", 1)[1]:
            _fail(f"ray.cpu_label_selector[{i}]", item, "must be key:value (a Ray node label)")
    if seg.short_supervoxels not in ("drop", "pad"):
        _fail("segment.short_supervoxels", seg.short_supervoxels, "must be drop or pad")
    if seg.max_num_iter < 1:
        _fail("segment.max_num_iter", seg.max_num_iter, "must be >= 1")
    if seg.videos_per_part < 1:
        _fail("segment.videos_per_part", seg.videos_per_part, "must be >= 1")

    act = c.activate
    if act.batch_size < 0:
        _fail("activate.batch_size", act.batch_size, "must be >= 1, or 0 for automatic")
    if act.num_actors is not None and act.num_actors < 1:
        _fail("activate.num_actors", act.num_actors, "must be >= 1 (or null: one per GPU)")
    if act.cpus_per_actor < 1:
        _fail("activate.cpus_per_actor", act.cpus_per_actor, "must be >= 1")
    if act.resampling not in ("bicubic", "bilinear"):
        _fail("activate.resampling", act.resampling, "must be bicubic or bilinear")
    if not 0 <= act.fill <= 255:
        _fail("activate.fill", act.fill, "must be a pixel value in [0, 255]")
    if act.videos_per_part < 1:
        _fail("activate.videos_per_part", act.videos_per_part, "must be >= 1")

    con = c.concepts
    if not 0 < con.discovery_fraction < 1:
        _fail("concepts.discovery_fraction", con.discovery_fraction, "must be in (0, 1)")
    for key in ("k", "niter", "nredo", "num_random_exp", "random_set_size", "max_videos"):
        if getattr(con, key) < 1:
            _fail(f"concepts.{key}", getattr(con, key), "must be >= 1")
    if con.num_random_exp < 2:
        _fail("concepts.num_random_exp", con.num_random_exp, "must be >= 2 (the t-test pairs the random sets)")
    if con.min_videos < 0:
        _fail("concepts.min_videos", con.min_videos, "must be >= 0")
    if con.rules not in ("3dace", "ace"):
        _fail("concepts.rules", con.rules, "must be 3dace or ace")
    if con.cav_model not in ("torch", "sgd", "logistic"):
        _fail("concepts.cav_model", con.cav_model, "must be torch, sgd or logistic")
    if con.correction not in ("none", "holm"):
        _fail("concepts.correction", con.correction, "must be none or holm")
    if not 0 < con.p_threshold < 1:
        _fail("concepts.p_threshold", con.p_threshold, "must be in (0, 1)")

    m = c.model
    from pipeline.models.registry import MODEL_NAMES, ModelConfigError, check_model_config, model_window

    if m.name not in MODEL_NAMES:
        import difflib

        close = difflib.get_close_matches(m.name, MODEL_NAMES, n=3)
        _fail("model.name", m.name, f"unknown model; close matches: {close or 'none'}; known: {sorted(MODEL_NAMES)}")
    if m.name in ("checkpoint", "torchscript"):
        if not m.path:
            _fail("model.path", m.path, f"model={m.name} needs model.path=/path/to/file")
        if not os.path.isfile(m.path):
            _fail("model.path", m.path, "no such file")
    if m.name == "factory" and (not m.factory or ":" not in m.factory):
        _fail("model.factory", m.factory, "model=factory needs model.factory=package.module:function")
    if m.device not in ("auto", "cpu", "cuda"):
        _fail("model.device", m.device, "must be auto, cpu or cuda")
    if m.mean and len(m.mean) != 3:
        _fail("model.mean", list(m.mean), "must have 3 values (RGB) or be empty")
    if m.std and (len(m.std) != 3 or min(m.std) <= 0):
        _fail("model.std", list(m.std), "must have 3 positive values (RGB) or be empty")
    model_dict = OmegaConf.to_container(m, resolve=True) if isinstance(m, DictConfig) else vars(m)
    try:
        check_model_config(model_dict)
        window = model_window(model_dict)
    except ModelConfigError as e:
        raise ConfigError(str(e)) from None
    if "activate" in c.run.stages and c.clip.num_frames < window:
        _fail("clip.num_frames", c.clip.num_frames,
              f"shorter than the model's window of {window} frames: no clip or supervoxel could be activated")

    for i, stage in enumerate(c.run.stages):
        if stage not in STAGES:
            _fail(f"run.stages[{i}]", stage, f"unknown stage; known: {list(STAGES)}")
    if c.run.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        _fail("run.log_level", c.run.log_level, "must be DEBUG, INFO, WARNING or ERROR")


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain dicts (what tasks and actors receive)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
