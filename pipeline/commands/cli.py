"""`ace3d`: the one command, `ace3d <command> [key=value ...]`.

    ace3d run    ...   the main job (also `python -m pipeline`)
    ace3d score  ...   explain new videos with a finished run (`python -m pipeline.score`)
    ace3d report ...   remake a run's report with other settings (`python -m pipeline.report`)
    ace3d atlas  ...   nearest supervoxels in a finished run's atlas (`python -m pipeline.atlas`)
    ace3d plan   ...   what a run will cost, before it runs (`python -m pipeline.commands.plan`)
    ace3d compare ...  the concepts two runs share (`python -m pipeline.compare`)
    ace3d train  ...   train or evaluate a video classifier (`python -m pipeline.train`)

Every command takes `key=value` overrides (Hydra's grammar; `group=option` picks a preset) and
answers `--help` with what it does and its keys and their defaults. An error is one line,
`error: ...` on stderr, and exit code 2. The `python -m` forms run the same code through
`run_module`.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence


@dataclass(frozen=True)
class Command:
    name: str
    module: str  # its `python -m` form
    summary: str
    usage: str
    about: str


RUN_ABOUT = """\
Explains a video model on a corpus (3D ACE): every video becomes supervoxels at several
resolutions, their patches go through the model, their activations are clustered into concepts
per class and layer, and the concepts are scored (TCAV with significance tests, causal
importance) and shown in report/index.html under run.output_dir. A rerun resumes the folder.
With no key the embedded default runs: the synthetic corpus and the demo model."""

SCORE_ABOUT = """\
Ingests, segments and activates new videos with the finished run's model, clip, segment and
activate settings (those cannot change), assigns their supervoxels to the run's concepts and
writes per video the prediction, the concepts present, voxel importance and a report page into
run.output_dir. trust_run=true also loads a run's checkpoint from a folder this machine did
not write."""

ATLAS_ABOUT = """\
Searches the run's FAISS atlas: the k supervoxels nearest a supervoxel, a global concept or a
concept of concepts.parquet, one per line, nearest first (format=json: one JSON object per
line)."""

TRAIN_ABOUT = """\
Trains the architecture of `model` from scratch on a stratified split of the corpus, keeps the
weights of the best validation epoch in train.output (load them with model=checkpoint
model.path=...) and prints the held-out accuracy, and the accuracy on the same clips shuffled
in time (a model that uses motion falls to chance there)."""

PLAN_ABOUT = """\
Takes the overrides `ace3d run` would take and says, before any work, what that run will cost:
the corpus (videos, classes, failed files), which labels the model knows, and from a few
sampled videos decoded and segmented here with the run's settings, supervoxels and model
windows per clip, storage, CPU core-hours for segmentation, GPU-hours for activation and
evaluation at stated rates, the driver's memory. Printed as a table and written to
<run.output_dir>/plan.json (output=<file> elsewhere)."""

COMPARE_ABOUT = """\
Matches the concepts of two runs over the same videos and segmentation (another model, another
checkpoint, a randomised control) one-to-one per class by the Jaccard index of their member
supervoxels, and says which are significant in both (shared) and in one only. Writes
comparison.parquet, comparison.json and index.html to output (default <run_a>/comparison)."""

COMMANDS = {c.name: c for c in (
    Command("run", "pipeline", "the main job: supervoxels, activations, concepts, TCAV, "
            "evaluation, report", "ace3d run [group=option ...] [key=value ...]", RUN_ABOUT),
    Command("score", "pipeline.score", "explain new videos with a finished run, no rediscovery",
            "ace3d score run_dir=<run folder> run.output_dir=<new folder> "
            "[dataset=... key=value ...]", SCORE_ABOUT),
    Command("report", "pipeline.report", "remake a finished run's report with other settings",
            "ace3d report run_dir=<run folder> [report.<key>=<value> ...]",
            "Rewrites report/ of a finished run with other report settings; nothing else runs."),
    Command("atlas", "pipeline.atlas", "the supervoxels of a finished run nearest a supervoxel "
            "or a concept", "ace3d atlas query run_dir=<run folder> (video_id=<id> "
            "supervoxel_id=<id> | global_concept=<n> | concept=<name>) [layer=<layer>] [k=10] "
            "[nprobe=<lists>] [format=table|json]", ATLAS_ABOUT),
    Command("plan", "pipeline.commands.plan", "what a run will cost, before it runs (from a few "
            "sampled videos)", "ace3d plan [the run's group=option and key=value ...] [sample=6] "
            "[output=<file>]", PLAN_ABOUT),
    Command("compare", "pipeline.compare", "the concepts two runs over the same videos share "
            "(matched by their members)", "ace3d compare run_a=<run folder> run_b=<run folder> "
            "[output=<folder>] [min_jaccard=0.1]", COMPARE_ABOUT),
    Command("train", "pipeline.train", "train a video classifier on a corpus, or evaluate one "
            "(train.epochs=0)", "ace3d train [group=option ...] [key=value ...]", TRAIN_ABOUT),
)}

HELP = ("-h", "--help")
SWEEP = ("-m", "--multirun")


def main(argv: Optional[list[str]] = None) -> int:
    """The `ace3d` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in HELP:
        print(overview(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from pipeline import __version__

        print(f"ace3d {__version__}")
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        return fail(f"unknown command {argv[0]!r}; the commands: {', '.join(COMMANDS)} "
                    "(ace3d --help)")
    return run_module(command.name, argv[1:])


def run_module(name: str, argv: list[str]) -> int:
    """Command `name` with its arguments: its help, a sweep refused, or its main."""
    command = COMMANDS[name]
    if any(a in HELP for a in argv):
        print(command_help(command))
        return 0
    if name in ("run", "train") and any(a in SWEEP or a.startswith("hydra.mode=") for a in argv):
        return fail("sweeps (-m/--multirun) are not supported: every member would write into the "
                    "same folder; run each setting as its own command with its own run.output_dir")
    return _MAINS[name](argv)


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def overview() -> str:
    from pipeline import __version__

    width = max(map(len, COMMANDS))
    lines = [f"usage: ace3d <command> [key=value ...]        (ace3d {__version__})", "",
             "3D ACE: spatio-temporal concept-based explanation of video models, at corpus scale "
             "on Ray.", "", "commands:"]
    lines += [f"  {c.name:<{width}}  {c.summary}" for c in COMMANDS.values()]
    lines += ["", "ace3d <command> --help: what it does, its keys and their defaults."]
    return "\n".join(lines)


def command_help(command: Command) -> str:
    lines = [f"usage: {command.usage}",
             f"       (python -m {command.module} takes the same arguments)", "", command.about, ""]
    if command.name == "score":
        lines += ["run_dir=<run folder>    the finished run (required)",
                  "trust_run=false         load a run's checkpoint this machine did not write", ""]
    if command.name == "plan":
        lines += ["sample=6                the videos decoded and segmented to measure", ""]
    if command.name in ("run", "train", "score", "plan"):
        config = "train" if command.name == "train" else "config"
        lines += ["presets (group=option):"]
        lines += [f"  {group:<10} {', '.join(names)}" for group, names in presets(config).items()]
        lines += ["", "keys (key=value; the default shown):"]
        lines += [f"  {key} = {value}" for key, value in config_keys(config)]
    elif command.name == "report":
        import dataclasses

        from pipeline.report.params import ReportParams

        lines += ["keys (the default shown):", "  run_dir = <run folder>  (required)"]
        report = flatten(dataclasses.asdict(ReportParams()), "report")
        lines += [f"  {key} = {value}" for key, value in report]
    return "\n".join(lines).rstrip()


def presets(config: str) -> dict[str, list[str]]:
    """The option files of each config group under conf/ (the groups `config` draws on)."""
    from pipeline.config import CONF_DIR

    out = {}
    for group in sorted(os.listdir(CONF_DIR)):
        path = os.path.join(CONF_DIR, group)
        if os.path.isdir(path) and (config == "config" or group in ("dataset", "model")):
            out[group] = sorted(f[:-5] for f in os.listdir(path) if f.endswith(".yaml"))
    return out


def composed(config: str = "config", overrides: Sequence[str] = ()) -> Any:
    """conf/'s config `config` with Hydra overrides, as the commands compose it."""
    from hydra import compose, initialize_config_dir

    from pipeline.config import CONF_DIR, register_configs

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config, overrides=list(overrides))


def config_keys(config: str) -> list[tuple[str, str]]:
    """Every key of the composed default config `config` with its default (unresolved)."""
    from omegaconf import OmegaConf

    return flatten(OmegaConf.to_container(composed(config), resolve=False), "")


def flatten(node: Any, prefix: str) -> list[tuple[str, str]]:
    """(dotted key, value as written on a command line) of every leaf of `node`."""
    if isinstance(node, dict) and node:
        return [kv for k, v in node.items() for kv in flatten(v, f"{prefix}.{k}" if prefix else k)]
    return [(prefix, node if isinstance(node, str) else json.dumps(node))]


def _hydra_main(module: str) -> Callable[[list[str]], int]:
    """A Hydra main (it reads sys.argv) as `main(argv) -> exit code`."""
    def run(argv: list[str]) -> int:
        saved, sys.argv = sys.argv, [sys.argv[0], *argv]
        try:
            importlib.import_module(module).main()
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            sys.argv = saved
        return 0

    return run


def _argv_main(module: str) -> Callable[[list[str]], int]:
    return lambda argv: importlib.import_module(module).main(argv)


# The modules are imported when their command runs: `ace3d --help` loads no torch or Ray.
_MAINS = {"run": _hydra_main("pipeline.job"), "train": _hydra_main("pipeline.train"),
          "score": _argv_main("pipeline.score"), "report": _argv_main("pipeline.commands.report"),
          "atlas": _argv_main("pipeline.commands.atlas"),
          "plan": _argv_main("pipeline.commands.plan"), "compare": _argv_main("pipeline.compare")}
