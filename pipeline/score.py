"""Explain new videos with a finished run, no rediscovery:

    python -m pipeline.score run_dir=outputs/synthetic-demo dataset=folder dataset.root=/abs/new \\
        run.output_dir=/abs/scored

The new videos are ingested, segmented and activated with the finished run's clip, segment and
activate settings and its model (into `run.output_dir`, a run folder of their own), then each
supervoxel goes to the run's concepts of the class the model predicts (and of the video's label,
when that is another class of the run), within each concept's radius: per video the prediction
(predictions/), which concepts are present where (concept_presence/), the TCAV-based and causal
voxel importance (voxel_importance/, as a run's; `open_run(out).voxel_importance(video)`), and a
report page for the videos (report/index.html). Settings the run's concepts depend on cannot
change: a different model, clip, segment or activate setting than the run's stops before any
work, naming it. The same from Python: `pipeline.score_videos`.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Iterable, Optional

from omegaconf import DictConfig, OmegaConf

from pipeline import io
from pipeline.console import show_progress
from pipeline.config import MODULE, ConfigError, to_plain
from pipeline.lease import LeaseError
from pipeline.fingerprints import activate_settings, segment_settings
from pipeline.run_folder import CONCEPTS, DONE, RUN_JSON, RunFolder, RunFolderError

SCORE_STAGES = ["ingest", "segment", "activate"]


def pinned(c: dict[str, Any]) -> dict[str, Any]:
    """The settings a run's concepts depend on, as flat keys: the clip, the segment and activate
    settings of the fingerprints, the model (but where it runs)."""
    out = {f"clip.{k}": v for k, v in c["clip"].items()}
    out.update({f"segment.{k}": v for k, v in segment_settings(c).items()})
    out.update({f"activate.{k}": v for k, v in activate_settings(c).items()})
    out.update({f"model.{k}": v for k, v in c["model"].items() if k != "device"})
    return out


def pin_to_run(cfg: DictConfig, default: DictConfig, source: dict[str, Any], named: Iterable[str]) -> DictConfig:
    """`cfg` with the finished run's pinned settings; a pinned key the user set (it differs from
    the default, or its group or itself is named in `named`) to another value than the run's
    raises ConfigError naming it. A key the run's record lacks (a setting added since) is its
    default."""
    from pipeline.job import absolutise

    absolutise(cfg)
    absolutise(default)
    mine, base = pinned(to_plain(cfg)), pinned(to_plain(default))
    theirs = {**base, **pinned(source)}
    named = set(named)
    touched = [k for k in mine if mine[k] != base.get(k) or k in named or k.split(".")[0] in named]
    differ = [k for k in touched if k in theirs and mine[k] != theirs[k]]
    if differ:
        listed = "; ".join(f"{k}={mine[k]!r} (the run's: {theirs[k]!r})" for k in differ)
        raise ConfigError(differ[0], f"differs from the finished run's settings: {listed}. Its concepts score only "
                                     "videos segmented and activated as its own were: leave these out", mine[differ[0]])
    for key, value in theirs.items():
        if OmegaConf.select(cfg, key, default="__absent__") != "__absent__":
            OmegaConf.update(cfg, key, value, merge=False)
    OmegaConf.update(cfg, "run.stages", list(SCORE_STAGES), merge=False)
    return cfg


# The models whose loading runs code a run folder names: scoring with such a folder needs trust.
RUNS_CODE = {"factory": "imports and calls the factory {factory!r}",
             "torchscript": "loads the TorchScript file {path!r} (TorchScript is code)"}


def literal(value: Any) -> Any:
    """A record's value with every `${` escaped: a run.json handed over is data, and an
    interpolation in it (`${oc.env:SECRET}`) stays text instead of being resolved."""
    if isinstance(value, str):
        return value.replace("${", "\\${")
    if isinstance(value, list):
        return [literal(v) for v in value]
    if isinstance(value, dict):
        return {k: literal(v) for k, v in value.items()}
    return value


def source_run(run_dir: Optional[str], trust: bool = False) -> tuple[RunFolder, dict[str, Any]]:
    """The finished run to score with, and its config (read as data: `literal`); ConfigError
    when it is not one, or when its model runs code on loading (`RUNS_CODE`) and `trust` is
    not given (a folder someone hands you could name any module)."""
    if not run_dir:
        raise ConfigError("run_dir", "is missing: name the finished run whose concepts score the videos "
                                     "(run_dir=/path/to/run)")
    root = str(run_dir) if io.is_uri(str(run_dir)) else os.path.abspath(os.path.expanduser(str(run_dir)))
    source = RunFolder(root)
    if not source.exists(RUN_JSON) or not source.exists(CONCEPTS):
        raise ConfigError("run_dir", f"is not a finished run: it needs {RUN_JSON} and {CONCEPTS} (run the job's "
                                     "concepts stage first)", run_dir)
    source.check_format()
    c = literal(io.read_json(source.path(RUN_JSON))["config"])
    what = RUNS_CODE.get(c["model"]["name"])
    if what and not trust:
        raise ConfigError("trust_run", f"{run_dir}'s run.json names model.name={c['model']['name']}, and scoring with "
                                       f"it {what.format(**c['model'])}: give trust_run=true (Python: "
                                       "trust_run=True) only for a folder you trust", False)
    if c["model"]["name"] == MODULE:
        raise ConfigError("run_dir", "the run explained an nn.Module handed to the Python API; a shell command "
                                     "cannot rebuild it", run_dir)
    return source, c


def score_job(cfg: DictConfig, source: RunFolder) -> dict[str, Any]:
    """Run the ingest, segment and activate stages on the new videos, then the score step and
    the scored report, under one lease; returns run.json."""
    from pipeline.job import run_job
    from pipeline.stages.report import build_scored_report
    from pipeline.stages import score

    out = str(cfg.run.output_dir)
    out = out if io.is_uri(out) else os.path.abspath(os.path.expanduser(out))
    if out.rstrip("/") == source.root.rstrip("/") or RunFolder(out).exists(DONE, "concepts"):
        raise ConfigError("run.output_dir", "holds a run's concepts (it is a run folder of the job): give the scored "
                                            "videos a folder of their own", out)

    def report(job: Any) -> None:
        job.record["stages"]["report"] = build_scored_report(job.folder, job.c, job.record, source.root)

    return run_job(cfg, then=[lambda job: score.run(job, source), report])


def main(argv: list[str]) -> int:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from pipeline.config import CONF_DIR, register_configs

    run_dir = next((a.split("=", 1)[1] for a in argv if a.startswith("run_dir=")), None)
    trust = any(a.lower() in ("trust_run=true", "trust_run=1") for a in argv)
    overrides = [a for a in argv if not a.startswith(("run_dir=", "trust_run="))]
    if not any(a.startswith("run.output_dir=") for a in overrides):
        print("error: run.output_dir is missing: the scored videos get a run folder of their own "
              "(run.output_dir=/path)", file=sys.stderr)
        return 2
    register_configs()
    try:
        source, c = source_run(run_dir, trust)
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=overrides)
            default = compose("config", overrides=[])
        named = [a.lstrip("+~").split("=", 1)[0] for a in overrides]
        cfg = pin_to_run(cfg, default, c, named)
        show_progress()
        score_job(cfg, source)
    except (ConfigError, RunFolderError, LeaseError, FileNotFoundError, HydraException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from pipeline.commands.cli import run_module

    sys.exit(run_module("score", sys.argv[1:]))
