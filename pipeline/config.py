"""The configuration schema: one dataclass per config group, each with its checks.

Hydra composes `conf/` on these dataclasses: an unknown key or a wrongly typed value fails at
composition, naming the key; `validate` checks the rest (ranges, choices, files) before any work.

The method's parameter sets are the algorithm's own dataclasses (`clip`: `ClipSpec`, `segment`:
`SegmentParams` plus scheduling, ...): each field, unit and default is defined once, beside the
code that uses it; their checks raise `ParameterError`, and this module names the config key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from pipeline.activations.params import ActivateParams
from pipeline.atlas.params import AtlasParams
from pipeline.concepts.params import ConceptParams
from pipeline.data.synthetic import SyntheticParams
from pipeline.data.video import ClipSpec, DecodeLimits
from pipeline.evaluation.deletion import EvaluateParams
from pipeline.params import SCHEDULING, ParameterError, require
from pipeline.report.params import ReportParams
from pipeline.segmentation.supervoxels import SegmentParams

_HERE = os.path.dirname(os.path.abspath(__file__))  # Hydra's configs: in the package in a wheel, else beside it
CONF_DIR = max((os.path.join(_HERE, "conf"), os.path.join(os.path.dirname(_HERE), "conf")), key=os.path.isdir)

STAGES = ("ingest", "segment", "activate", "concepts", "atlas", "evaluate", "report")
DATASET_KINDS = ("synthetic", "folder", "csv", "list")
MODULE = "module"  # model.name of an nn.Module handed to the Python API


class ConfigError(ValueError):
    """A config key (`key`, dotted from the root) holds a value the pipeline cannot run with."""

    _UNSET = object()

    def __init__(self, key: str, why: str, value: Any = _UNSET) -> None:
        self.key, self.why, self.value = key, why, value
        shown = "" if value is ConfigError._UNSET else f" = {value!r}"
        super().__init__(f"config key '{key}'{shown}: {why}")

    @classmethod
    def from_parameter(cls, group: str, error: ParameterError) -> "ConfigError":
        """The config's words for a parameter set's error: `group.name`."""
        return cls(f"{group}.{error.name}" if group else error.name, error.why, error.value)


def nested(prefix: str, check: Any) -> None:
    """Run `check()`; a ParameterError names its field below `prefix` (`synthetic.size`)."""
    try:
        check()
    except ParameterError as e:
        raise ParameterError(f"{prefix}.{e.name}", e.value, e.why) from None


@dataclass
class DatasetConfig:
    """Where the videos come from.

    path_template: a csv row's file under `root`, from its columns.
    kind: `synthetic` (generated on first use under `root`), `folder` (`root/<class>/<video>.<ext>`),
    `csv` (Kinetics-style annotations: the `csv` file with columns
    label,youtube_id,time_start,time_end,split; each row's file is `root/<path_template>`) or
    `list` (the files in `videos`, each labelled by its folder's name).
    classes, splits (csv only), max_videos_per_class: restrict the corpus (None: all).
    identity: what tells a rerun a video changed: `stat` (size, modification time) or `sha256`.
    """

    name: str = MISSING  # the corpus's name (in the default run.output_dir)
    kind: str = MISSING
    root: Optional[str] = None  # the corpus's folder (synthetic: where it is generated)
    csv: Optional[str] = None  # kind=csv: the annotation file
    path_template: str = "{split}/{label}/{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"
    identity: str = "stat"
    classes: Optional[list[str]] = None
    splits: Optional[list[str]] = None
    max_videos_per_class: Optional[int] = None
    videos: Optional[list[str]] = None  # kind=list: the video files
    synthetic: SyntheticParams = field(default_factory=SyntheticParams)

    def check(self) -> None:
        require(self.kind in DATASET_KINDS, "kind", self.kind, f"must be one of {list(DATASET_KINDS)}")
        require(self.identity in ("stat", "sha256"), "identity", self.identity, "must be stat or sha256")
        if self.kind in ("folder", "csv"):
            require(bool(self.root), "root", self.root,
                    f"a {self.kind} corpus needs its root folder (dataset.root=/abs/path)")
            require(os.path.isdir(str(self.root)), "root", self.root, "no such folder")
        if self.kind == "csv":
            require(bool(self.csv), "csv", self.csv, "a csv corpus needs its annotation file")
            require(os.path.isfile(str(self.csv)), "csv", self.csv, "no such file")
        if self.kind == "list":
            require(bool(self.videos), "videos", self.videos, "a list corpus needs its video files")
        require(self.max_videos_per_class is None or self.max_videos_per_class >= 1, "max_videos_per_class",
                self.max_videos_per_class, "must be >= 1")
        nested("synthetic", self.synthetic.check)


@dataclass
class SegmentConfig(SegmentParams):
    """Supervoxels (method step 2): the fields of `SegmentParams`, and

    short_supervoxels: what becomes of a supervoxel spanning fewer frames than the model window:
        `drop` (the reference: marked dropped_short) or `pad` (kept; its patch is the one
        T-frame window of the clip centred on it, the frames it does not reach filled whole).
    videos_per_part: videos per Parquet part file (scheduling: a part is the unit of resume).
    """

    short_supervoxels: str = "drop"
    videos_per_part: int = field(default=64, metadata=SCHEDULING)

    def check(self) -> None:
        super().check()
        require(self.short_supervoxels in ("drop", "pad"), "short_supervoxels", self.short_supervoxels,
                "must be drop or pad")
        require(self.videos_per_part >= 1, "videos_per_part", self.videos_per_part, "must be >= 1")


@dataclass
class ActivateConfig(ActivateParams):
    """Activations (method steps 3-4): the fields of `ActivateParams`, and the scheduling of the
    model actors (none of these change an output):

    gpus_per_actor: GPUs a model actor asks for: None: 1 where the cluster has a GPU at the
        stage's start, else CPU actors; 1 (ray=cluster): asked for whether or not a GPU node is
        up, so an autoscaler launches them; 0: CPU actors.
    num_actors: the most model actors (None: one per GPU the cluster has or its autoscaler's
        node types can bring, `ray.autoscaler_config`; else one); min_actors: a stage starts
        with this many ready, the others join as their nodes come; actor_wait_s: how long a
        stage waits with no actor ready (for a GPU node) before it stops, resumable.
    cpus_per_actor: CPUs a CPU actor reserves; torch_threads: its torch threads (0: the node's
        cores, since the stages run one after the other).
    videos_per_part: videos per Parquet part file (a part is the unit of resume).
    """

    gpus_per_actor: Optional[float] = field(default=None, metadata=SCHEDULING)
    num_actors: Optional[int] = field(default=None, metadata=SCHEDULING)
    min_actors: int = field(default=1, metadata=SCHEDULING)
    actor_wait_s: float = field(default=900.0, metadata=SCHEDULING)
    cpus_per_actor: int = field(default=1, metadata=SCHEDULING)
    torch_threads: int = field(default=0, metadata=SCHEDULING)
    videos_per_part: int = field(default=64, metadata=SCHEDULING)

    def check(self) -> None:
        super().check()
        require((self.gpus_per_actor or 0) >= 0, "gpus_per_actor", self.gpus_per_actor, "must be >= 0 (or null)")
        require((self.num_actors or 1) >= 1, "num_actors", self.num_actors, "must be >= 1 (or null: one per GPU)")
        require(1 <= self.min_actors <= (self.num_actors or self.min_actors), "min_actors", self.min_actors,
                f"must be >= 1 and <= activate.num_actors ({self.num_actors})")
        require(self.actor_wait_s > 0, "actor_wait_s", self.actor_wait_s, "must be > 0 (seconds)")
        require(self.cpus_per_actor >= 1, "cpus_per_actor", self.cpus_per_actor, "must be >= 1")
        require(self.videos_per_part >= 1, "videos_per_part", self.videos_per_part, "must be >= 1")


@dataclass
class ModelConfig:
    """Which model to explain (see `pipeline.models.registry`).

    name: a registry name (`demo`, `x3d_m`, `r3d_18`, ...) or `checkpoint`, `torchscript`,
        `factory` (`module`: an nn.Module handed to `pipeline.explain`).
    path: the checkpoint / TorchScript file (for `checkpoint`, `torchscript`).
    factory: `module:function` returning an `nn.Module` (for `factory`).
    pretrained: load the registry's published weights through the framework's cache.
    layers: layers to explain (module names); empty: the registry's recommended layers.
    class_names: overrides the class names the model carries.
    window: model input frames T; height/width: its input size (0: the registry's).
    mean/std: input normalisation on the 0-1 scale (empty: the registry's).
    layout: how the explained layers lay out their outputs, `channels_first` ([B, C, T, H, W]),
        `channels_last` ([B, T, H, W, C], as Swin3D's stages) or `tokens` ([B, N, C]); empty: the
        registry's, else channels_first (a block returning (tokens, T x H x W grid) is recognised).
    device: auto | cpu | cuda.
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
    layout: str = ""
    device: str = "auto"

    def check(self) -> None:
        """The checks that need no model; `validate` then builds it on the meta device."""
        from pipeline.models.registry import MODEL_NAMES

        if self.name not in (*MODEL_NAMES, MODULE):
            import difflib

            close = difflib.get_close_matches(self.name, MODEL_NAMES, n=3)
            raise ParameterError("name", self.name, f"unknown model; close matches: {close or 'none'}; "
                                                    f"known: {sorted(MODEL_NAMES)}")
        if self.name in ("checkpoint", "torchscript"):
            require(bool(self.path), "path", self.path, f"model={self.name} needs model.path=/path/to/file")
            require(os.path.isfile(str(self.path)), "path", self.path, "no such file")
        require(self.name != "factory" or ":" in (self.factory or ""), "factory", self.factory,
                "model=factory needs model.factory=package.module:function")
        require(self.device in ("auto", "cpu", "cuda"), "device", self.device, "must be auto, cpu or cuda")
        require(not self.mean or len(self.mean) == 3, "mean", list(self.mean), "must have 3 values (RGB) or be empty")
        require(not self.std or (len(self.std) == 3 and min(self.std) > 0), "std", list(self.std),
                "must have 3 positive values (RGB) or be empty")
        require(self.layout in ("", "channels_first", "channels_last", "tokens"), "layout", self.layout,
                "must be channels_first, channels_last, tokens or empty (the registry's)")


@dataclass
class RayConfig:
    """How to reach Ray (address None starts an embedded local cluster).
    cpu_label_selector: Ray node labels the CPU stages' tasks (ingest, segment) must match, as
    `key:value` strings, e.g. [ace3d-node:cpu] on a cluster made with cluster.yaml, so that
    segmentation stays off the GPU nodes (Ray only prefers to). Empty: any node. The job stops
    before any work when neither a node nor a node type of its autoscaler carries these labels.
    autoscaler_config: the autoscaler's cluster YAML, read for the node types it can launch
    (labels, GPUs, counts); None: `~/ray_bootstrap_config.yaml`, `ray up`'s copy on the head.
    """

    address: Optional[str] = None  # a cluster's address (or RAY_ADDRESS); None: an embedded one
    num_cpus: Optional[int] = None  # the embedded cluster's CPUs (None: the machine's)
    object_store_memory: Optional[int] = None  # the embedded cluster's object store, bytes
    include_dashboard: bool = False  # the embedded cluster's dashboard
    cpu_label_selector: list[str] = field(default_factory=list)
    autoscaler_config: Optional[str] = None

    def check(self) -> None:
        for i, item in enumerate(self.cpu_label_selector):
            key, _, value = str(item).partition(":")
            require(bool(key) and bool(value), f"cpu_label_selector[{i}]", item, "must be key:value (a Ray node label)")


@dataclass
class RunConfig:
    """Where the outputs go and what the job does.

    output_dir: the run folder (relative paths are taken from the current directory).
    stages: the stages to run, in order. log_level: DEBUG, INFO, WARNING or ERROR.
    retry_failed: a rerun tries every failed video again (else those whose failure may pass).
    """

    output_dir: str = "outputs/${dataset.name}-${model.name}"
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    log_level: str = "INFO"
    retry_failed: bool = False

    def check(self) -> None:
        for i, stage in enumerate(self.stages):
            require(stage in STAGES, f"stages[{i}]", stage, f"unknown stage; known: {list(STAGES)}")
        require(self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"), "log_level", self.log_level,
                "must be DEBUG, INFO, WARNING or ERROR")


@dataclass
class TrainConfig:
    """`python -m pipeline.train`: fit a model on a corpus, print held-out accuracy."""

    output: Optional[str] = None  # where the checkpoint goes (None: nothing is written)
    epochs: int = 30  # at most; early stopping may end sooner
    batch_size: int = 8
    lr: float = 3e-3  # the one-cycle schedule's peak
    weight_decay: float = 1e-4
    holdout_fraction: float = 0.25  # of each class, never trained on: the accuracy printed last
    val_fraction: float = 0.1  # of each class's training clips, to choose the epoch kept
    patience: int = 8  # epochs without a better validation accuracy before stopping (0: never)
    min_epochs: int = 10  # the epochs before patience counts: a late learner is not stopped early
    seed: int = 0
    num_threads: int = 0  # torch threads (0: torch's default)

    def check(self) -> None:
        require(self.epochs >= 0, "epochs", self.epochs, "must be >= 0 (0: evaluate the model as it is)")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        require(self.lr > 0, "lr", self.lr, "must be > 0")
        require(0 < self.holdout_fraction < 1, "holdout_fraction", self.holdout_fraction, "must be in (0, 1)")
        require(0 <= self.val_fraction < 1, "val_fraction", self.val_fraction, "must be in [0, 1)")
        require(self.patience >= 0, "patience", self.patience, "must be >= 0 (0: never stop early)")
        require(self.min_epochs >= 0, "min_epochs", self.min_epochs, "must be >= 0")


@dataclass
class Config:
    dataset: DatasetConfig = MISSING
    clip: ClipSpec = field(default_factory=ClipSpec)
    decode: DecodeLimits = field(default_factory=DecodeLimits)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    activate: ActivateConfig = field(default_factory=ActivateConfig)
    concepts: ConceptParams = field(default_factory=ConceptParams)
    atlas: AtlasParams = field(default_factory=AtlasParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    report: ReportParams = field(default_factory=ReportParams)
    model: ModelConfig = field(default_factory=ModelConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    run: RunConfig = field(default_factory=RunConfig)


@dataclass
class TrainJobConfig(Config):
    train: TrainConfig = field(default_factory=TrainConfig)


GROUPS = ("dataset", "clip", "decode", "segment", "activate", "concepts", "atlas", "evaluate", "report", "model", "ray",
          "run")


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
    """Hydra's run folder, where it writes nothing (`hydra.output_subdir: null`; run.json holds
    the config): the run folder, or the current folder for a filesystem URI (s3://...)."""
    return str(output_dir) if "://" not in str(output_dir) else "."


def check_group(group: str, section: Any) -> None:
    """Run a group's checks (a dataclass instance), naming the config key of a bad value."""
    try:
        section.check()
    except ParameterError as e:
        raise ConfigError.from_parameter(group, e) from None


def validate(cfg: DictConfig, module: Any = None) -> int:
    """Check what the schema's types cannot: every group's own checks, then the model (on the
    meta device, or `module` handed to the API) against the clip (a default clip.num_frames below
    its window becomes the window). Returns the window; raises ConfigError naming a bad key."""
    from omegaconf.errors import MissingMandatoryValue

    try:
        obj = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as e:
        raise ConfigError(str(e.full_key), "is missing: give it a value (key=value)") from None
    for group in GROUPS + (("train",) if isinstance(obj, TrainJobConfig) else ()):
        check_group(group, getattr(obj, group))
    m = obj.model
    if m.name == MODULE and module is None:
        raise ConfigError("model.name", "an nn.Module is handed to the Python API (pipeline.explain(model=...)); "
                                        "on the command line name a model", MODULE)
    from pipeline.models.registry import check_model_config, model_window

    model_dict = OmegaConf.to_container(cfg.model, resolve=True)
    try:
        check_model_config(model_dict, module)
        window = model_window(model_dict)
    except ParameterError as e:
        raise ConfigError.from_parameter("model", e) from None
    if obj.clip.num_frames == ClipSpec.num_frames < window:  # at its default: the window
        cfg.clip.num_frames = obj.clip.num_frames = window
    if "activate" in obj.run.stages and obj.clip.num_frames < window:
        raise ConfigError("clip.num_frames", f"shorter than the model's window of {window} frames: no clip or "
                                             "supervoxel could be activated", obj.clip.num_frames)
    return window


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain dicts (what tasks and actors receive)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
