"""Shared helpers: real video files made with PyAV, the job run as a user runs it (a real
process) or in this process on one shared local Ray, the commands' mains called in-process,
the runs several test modules read, and the tiers (`ray`, `slow`, `own_cluster` markers;
docs/testing.md)."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Fixtures whose tests run Ray (in this process, on the shared local instance): such a test is
# in the `ray` tier whether or not it says so.
RAY_FIXTURES = {"local_ray", "small_run", "tiny_run", "segmented_run", "clean_run", "scored"}


def make_video(path: str, frames: int = 20, size: tuple[int, int] = (48, 64), fps: int = 10,
               seed: int = 0) -> np.ndarray:
    """A real mp4 (H.264) of moving noise blocks; returns the frames written."""
    from pipeline.data.video import write_video

    rng = np.random.default_rng(seed)
    h, w = size
    base = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    video = np.stack([np.roll(base, 2 * t, axis=1) for t in range(frames)])
    write_video(path, video, fps=fps)
    return video


def run_cli(*args: str, module: str = "pipeline", timeout: int = 600,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m <module> <args>` as a user would, from the project root (a real process:
    the few tests that check an entry point end to end, or need a process to kill)."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@dataclass
class Result:
    """What a command printed and returned, as `subprocess.CompletedProcess` has it."""

    returncode: int
    stdout: str
    stderr: str


# `python -m <module>`'s main, per module: Hydra's (reads sys.argv) or one taking argv.
MAINS = {"pipeline": ("pipeline.job", False), "pipeline.train": ("pipeline.train", False),
         "pipeline.score": ("pipeline.score", True), "pipeline.report": ("pipeline.commands.report", True),
         "pipeline.atlas": ("pipeline.commands.atlas", True),
         "pipeline.compare": ("pipeline.compare", True)}


def call_main(*args: str, module: str = "pipeline") -> Result:
    """`python -m <module> <args>` in this process: the same main, its output captured, its exit
    code (a SystemExit's or the returned one). For error paths and commands that start no
    cluster of their own (they join the shared Ray when they need one)."""
    name, takes_argv = MAINS[module]
    main = importlib.import_module(name).main
    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, [module, *args]
    loggers = [logging.getLogger(), logging.getLogger("pipeline"), logging.getLogger("pipeline.train")]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    code: Any = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args)) if takes_argv else main()
            except SystemExit as e:
                code = e.code
    finally:
        sys.argv = argv
        for lg, (handlers, level, propagate) in zip(loggers, saved):  # Hydra's and show_progress's handlers
            lg.handlers[:] = handlers  # write to this call's streams: drop them
            lg.setLevel(level)
            lg.propagate = propagate
    return Result(code if isinstance(code, int) else (0 if code is None else 1), out.getvalue(), err.getvalue())


def compose(*overrides: str, config: str = "config"):
    """conf/'s composed config with `overrides`, as the CLI composes it."""
    from hydra import compose as hydra_compose, initialize_config_dir

    from pipeline.config import CONF_DIR, register_configs

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config, overrides=list(overrides))


def init_local_ray() -> None:
    """The shared local Ray of the in-process tests (started once; a test that needs a cluster
    of its own shuts it down, and the next one starts it again)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=True, configure_logging=False,
                 object_store_memory=512 * 1024 * 1024)


@pytest.fixture
def local_ray():
    init_local_ray()


def run_job_here(*overrides: str) -> tuple[dict[str, Any], str]:
    """The job `python -m pipeline <overrides>` runs, in this process on the shared Ray:
    (run.json, what it printed and logged)."""
    from pipeline.job import run_job

    init_local_ray()
    cfg = compose(*overrides)
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("[%(name)s][%(levelname)s] - %(message)s"))
    logger = logging.getLogger("pipeline")
    logger.addHandler(handler)
    try:
        with contextlib.redirect_stdout(buf):
            record = run_job(cfg)
    finally:
        logger.removeHandler(handler)
    return record, buf.getvalue()


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """The default job (segment=fine, the demo model, every stage up to the report) on 12
    synthetic videos per class, with the randomisation check and the user's concepts planted
    from the truth (actor, background, random: `planted_table`, made once the run is
    activated); shared by the explanation, report, atlas and score tests."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.evaluation.ground_truth import planted_table
    from pipeline.run_folder import RunFolder

    base = tmp_path_factory.mktemp("explain")
    out, planted = base / "run", base / "planted.parquet"
    args = [
        f"dataset.root={base / 'corpus'}",
        "dataset.synthetic.videos_per_class=12",
        "dataset.synthetic.seed=7",
        "concepts.randomisation_check=true",
    ]
    first, _ = run_job_here(f"run.output_dir={out}", *args, "run.stages=[ingest,segment,activate]")
    pq.write_table(
        pa.Table.from_pylist(planted_table(RunFolder(str(out), "planting"), str(base / "corpus"))),
        planted,
    )
    args.append(f"concepts.user={planted}")
    _, printed = run_job_here(f"run.output_dir={out}", *args)
    return {
        "out": str(out),
        "args": args,
        "stdout": printed,
        "record": json.load(open(out / "run.json")),
        "planted": str(planted),
        "activated": first,
    }  # activated: the record of the run up to activation


@pytest.fixture(scope="session")
def segmented_run(tmp_path_factory):
    """The job with the method's supervoxels (`segment=reference`: a quarter of the default's
    patches to activate) on a folder corpus (4 synthetic videos per class and one broken file)
    in units of 4 videos, its outputs written through a `file://` URI (pyarrow's filesystems,
    as on an object store); shared by the segment-stage and remote-output tests. `out`: the
    same folder as a local path, for reading. The default's supervoxels go through every stage
    in small_run."""
    from pipeline.data.synthetic import SyntheticParams, ensure_corpus

    base = tmp_path_factory.mktemp("seg")
    corpus = str(base / "corpus")
    ensure_corpus(corpus, SyntheticParams(videos_per_class=4, seed=21))
    folder = base / "folder"
    shutil.copytree(corpus, folder, ignore=shutil.ignore_patterns("*.parquet", "*.json"))
    (folder / "advance" / "broken.mp4").write_bytes(b"\x00" * 100)
    out = base / "run"
    args = [f"run.output_dir=file://{out}", "dataset=folder", f"dataset.root={folder}",
            "segment=reference", "segment.videos_per_part=4", "activate.videos_per_part=4"]
    record, printed = run_job_here(*args)
    return {"out": str(out), "uri": f"file://{out}", "args": args, "first": printed, "record": record}


def readme_example() -> str:
    """The README's Python block after its `<!-- api-example -->` marker."""
    text = open(os.path.join(ROOT, "README.md")).read()
    return text.split("<!-- api-example -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The README's API example run as it is written, in a folder of its own (its relative
    paths): 4 synthetic videos per class, segment=reference, 5 random sets, every stage; then
    the demo network handed over as an nn.Module. Its namespace and folder; the API tests read
    it, and the resilience tests compare their interrupted runs with it."""
    init_local_ray()  # explain() joins the Ray it finds up
    cwd = tmp_path_factory.mktemp("api")
    here = os.getcwd()
    namespace: dict = {}
    os.chdir(cwd)
    try:
        exec(compile(readme_example(), "README.md (the API example)", "exec"), namespace)
    finally:
        os.chdir(here)
    return namespace, cwd


# --- tiers -------------------------------------------------------------------------------------

def pytest_configure(config):
    config.addinivalue_line("markers", "ray: starts Ray (in this process or in a process it starts)")
    config.addinivalue_line("markers", "slow: takes long without Ray (model training); left out of test-fast")
    config.addinivalue_line("markers", "own_cluster: starts a Ray cluster of its own in this process (run last, "
                                       "after the tests that share the local one)")
    share_cores_between_workers()
    if os.environ.get("ACE3D_TEST_TIER") == "fast":
        # Every Ray started by this session (here or in a child process) makes its session
        # folder under RAY_TMPDIR: the fast tier's own, checked empty at the end.
        os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ace3d-fast-ray-")


def share_cores_between_workers() -> None:
    """Under `pytest -n N` the workers' model actors each run torch on every core. Left at its
    default, torch's OpenMP spins while its threads wait for each other, and on an
    oversubscribed machine that made activation about 4x slower (measured, 2 cores, 2 workers);
    passive waiting lets the busy worker have the cores the other leaves idle. Set before Ray
    starts, so that every process a worker starts inherits it."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


SHARED_RUNS = ("small_run", "tiny_run", "segmented_run")  # session runs: their readers form one xdist group each


@pytest.hookimpl(tryfirst=True)  # before xdist's, which reads the groups
def pytest_collection_modifyitems(config, items):
    """Markers and order. A test on a Ray fixture is `ray`. For `pytest -n 2 --dist loadgroup`
    (make test), each test gets a group, a unit a worker runs whole: the readers of a shared run
    one group (the run is made once), else its module (module fixtures made once). Groups are
    handed out in collection order, so the longest come first: the shared runs, then groups
    with a Ray or slow test; the tests on a cluster of their own last (serially, the shared
    local Ray is then started once before them)."""
    weight: dict[str, int] = {}
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if RAY_FIXTURES & fixtures:
            item.add_marker(pytest.mark.ray)
        shared = next((f for f in SHARED_RUNS if f in fixtures), None)
        group = shared or item.module.__name__
        item.add_marker(pytest.mark.xdist_group(group))
        heavy = 3 if shared else 2 if item.get_closest_marker("ray") or item.get_closest_marker("slow") else 0
        weight[group] = max(weight.get(group, 0), heavy)
    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (item.get_closest_marker("own_cluster") is not None,
                                 -weight[_group(item)], order[id(item)]))


def _group(item) -> str:
    return item.get_closest_marker("xdist_group").args[0]


def _fast_tier_rays() -> list[str]:
    """The Ray sessions started under the fast tier's RAY_TMPDIR (none, if it kept its word)."""
    root = os.path.join(os.environ.get("RAY_TMPDIR", ""), "ray")
    return [n for n in os.listdir(root) if n.startswith("session_") and n != "session_latest"] \
        if os.path.isdir(root) else []


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("ACE3D_TEST_TIER") == "fast" and _fast_tier_rays():
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if os.environ.get("ACE3D_TEST_TIER") == "fast" and _fast_tier_rays():
        terminalreporter.write_line(f"error: the fast tier started Ray ({len(_fast_tier_rays())} session(s) under "
                                    f"{os.environ['RAY_TMPDIR']}): mark the test that did `ray`", red=True)


# The tables the resilience and node-loss tests compare between two run folders, with their keys.
KEYS = {"concepts.parquet": ["target_class", "layer", "concept"],
        "concept_importance.parquet": ["target_class", "layer", "concept"],
        "concept_members": ["concept", "video_id", "supervoxel_id"],
        "tcav_scores": ["target_class", "layer", "concept", "random_set"],
        "evaluation": ["target_class", "layer", "ranking", "mode", "order", "kind", "k"],
        "voxel_importance": ["video_id", "target_class", "layer"],
        "atlas/assignments": ["layer", "video_id", "supervoxel_id"],
        "atlas/concepts.parquet": ["layer", "global_concept"],
        "atlas/class_concepts.parquet": ["layer", "global_concept", "target_class"],
        "atlas/concept_links": ["layer", "concept", "global_concept"]}


def same_outputs(a: str, b: str, later_stages: bool = True) -> None:
    """Two run folders hold the same results (whatever parts their work was cut into): the
    supervoxels and activations, and with `later_stages` every table after them."""
    import pandas as pd
    import pyarrow.parquet as pq

    from pipeline.io import read_parts

    key = ["layer", "video_id", "supervoxel_id"]
    for name in ("activations", "clip_activations"):
        act_a = read_parts(os.path.join(a, name)).to_pandas().sort_values(key).reset_index(drop=True)
        act_b = read_parts(os.path.join(b, name)).to_pandas().sort_values(key).reset_index(drop=True)
        assert len(act_a) == len(act_b) and act_a[key].equals(act_b[key])
        assert all((x == y).all() for x, y in zip(act_a.vector, act_b.vector))
    sv = [read_parts(os.path.join(d, "supervoxels")).to_pandas().sort_values(["video_id", "supervoxel_id"])
          .reset_index(drop=True) for d in (a, b)]
    assert sv[0].equals(sv[1])
    for name, k in (KEYS.items() if later_stages else ()):
        x, y = ((pq.read_table(os.path.join(d, name)) if name.endswith(".parquet")
                 else read_parts(os.path.join(d, name))).to_pandas().sort_values(k).reset_index(drop=True)
                for d in (a, b))
        pd.testing.assert_frame_equal(x, y)
