"""Resume and fault tolerance, as a user meets them, in one run folder: a Ray worker killed
while it segments and a second driver started on the live folder, then the driver killed
during activation, resumed on a bigger share of the machine (other scheduling settings),
killed again during the concepts stage, the atlas and evaluate. The last run ends with the
outputs of an uninterrupted run (the README's API example, tiny_run), and each run redoes only
the units of work that were not finished."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, run_cli, same_outputs


def _args(corpus: str, out: str) -> list[str]:
    """The settings of the README's API example run (tiny_run), cut into smaller units of work
    (scheduling settings: they change no output)."""
    return [f"run.output_dir={out}", "dataset=folder", f"dataset.root={corpus}", "segment=reference",
            "concepts.num_random_exp=5", "segment.videos_per_part=2", "activate.videos_per_part=2"]


@pytest.fixture(scope="module")
def clean_run(tiny_run, tmp_path_factory):
    """The uninterrupted run: the README example's (in this process, on the shared Ray; the
    interrupted runs are processes of their own)."""
    _, cwd = tiny_run
    return {"base": tmp_path_factory.mktemp("resilience"), "corpus": str(cwd / "data" / "tiny"),
            "out": str(cwd / "outputs" / "tiny")}


def _start(args: list[str], log: str) -> subprocess.Popen:
    """The job as a user starts it, in its own session so that it and the Ray cluster it
    embeds can be killed together."""
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=ROOT, start_new_session=True,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _kill_tree(proc: subprocess.Popen) -> None:
    family = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for p in family:  # Ray's own processes, wherever their session is
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=60)


def _markers(out: str, stage: str) -> int:
    """Units of a stage marked done in a run folder (rows of its markers)."""
    return sum(pq.read_metadata(p).num_rows for p in glob.glob(os.path.join(out, "_done", stage, "part-*.parquet")))


def _kill_when(proc: subprocess.Popen, out: str, stage: str, at_least: int, log: str) -> int:
    """Kill the driver (and its Ray) once `at_least` units of `stage` are done; returns how many were."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and _markers(out, stage) < at_least:
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before {stage} could be interrupted: " + open(log).read()[-2000:]
    _kill_tree(proc)
    return _markers(out, stage)


# Scheduling settings: they change how the work is cut and spread, never an output, so a run
# folder may be resumed with others (a bigger cluster, say).
OTHER_SCHEDULING = ["segment.videos_per_part=5", "activate.videos_per_part=3", "activate.num_actors=2",
                    "activate.cpus_per_actor=1"]


def _atlas_assigned(out: str) -> int:
    """Partitions the atlas stage has assigned (its assign units' markers)."""
    return sum('"kind": "assign"' in pq.read_table(p).column("record")[0].as_py()
               for p in glob.glob(os.path.join(out, "_done", "atlas", "part-*.parquet")))


def _kill_a_segment_worker(proc: subprocess.Popen, log: str) -> str:
    """Kill a Ray worker of the driver `proc` while it segments a video; its command line."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            family = psutil.Process(proc.pid).children(recursive=True)  # this job's Ray only
        except psutil.NoSuchProcess:
            break
        for p in family:
            try:
                cmd = " ".join(p.cmdline())
            except psutil.Error:
                continue
            if cmd.startswith("ray::segment_unit"):
                p.kill()  # a worker in the middle of segmenting a video
                return cmd
        time.sleep(0.05)
    raise AssertionError("no segmentation worker was seen running: " + open(log).read()[-2000:])


def test_faults_in_every_stage_end_with_an_uninterrupted_runs_outputs(clean_run):
    """A segmentation worker killed: its task is retried and nothing is lost. A second driver
    started on the live folder stops before any work, naming the run that holds it. The driver
    killed during activation, resumed with other scheduling settings; killed again during the
    concepts stage, the atlas and evaluate; the last run ends with an uninterrupted run's
    outputs and lets the folder go, and each run skipped what an earlier one had finished."""
    out = str(clean_run["base"] / "killed")
    args = _args(clean_run["corpus"], out)
    first = _start(args, out + ".log")
    _kill_a_segment_worker(first, out + ".log")
    assert first.poll() is None, ("the run ended before a second driver could start: "
                                  + open(out + ".log").read()[-2000:])
    holder = json.load(open(os.path.join(out, "lease.json")))
    assert holder["pid"] == first.pid
    second = run_cli(*args)
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"in use by run {holder['run_id']!r} (pid {first.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    activated = _kill_when(first, out, "activate", 2, out + ".log")
    assert 0 < activated < 12
    record = json.load(open(os.path.join(out, "run.json")))  # the first run's, up to segmentation
    assert record["counts"]["videos_in"] == 12 and record["counts"]["videos_ok"] == 12
    assert record["stages"]["segment"]["videos_segmented"] == 12  # the killed worker's video too
    assert not os.path.exists(os.path.join(out, "concepts.parquet"))
    # resumed on a bigger share of the machine, killed once a (class, layer) pair has concepts
    pairs_done = _kill_when(_start([*args, *OTHER_SCHEDULING], out + ".2.log"), out, "concepts", 1, out + ".2.log")
    assert 0 < pairs_done < 6  # 3 classes x 2 layers
    assert not os.path.exists(os.path.join(out, "concepts.parquet"))
    stage = json.load(open(os.path.join(out, "run.json")))["stages"]  # the second run's, up to activation
    assert stage["segment"]["videos_segmented"] == 0 and stage["segment"]["videos_skipped_done"] == 12
    assert stage["activate"]["videos_skipped_done"] == activated  # completed work not redone
    assert stage["activate"]["videos_activated"] == 12 - activated
    assert stage["activate"]["actors"] == 2
    # the atlas: killed once its 2 layers are trained and a partition of 6 is assigned
    _kill_when(_start(args, out + ".3.log"), out, "atlas", 3, out + ".3.log")
    assigned = _atlas_assigned(out)
    assert 0 < assigned <= 6
    record = json.load(open(os.path.join(out, "run.json")))  # the third run's, up to the concepts stage
    assert record["stages"]["activate"]["videos_activated"] == 0
    assert record["stages"]["concepts"]["pairs_skipped_done"] == pairs_done
    classes_done = _kill_when(_start(args, out + ".4.log"), out, "evaluate", 1, out + ".4.log")
    record = json.load(open(os.path.join(out, "run.json")))  # the fourth run's, up to the atlas stage
    assert record["stages"]["atlas"]["partitions_assigned"] == 6 - assigned
    assert record["stages"]["atlas"]["units_skipped_done"]["assign"] == assigned
    assert 0 < classes_done < 3
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    stage = json.load(open(os.path.join(out, "run.json")))["stages"]
    assert stage["concepts"]["pairs_skipped_done"] == 6
    assert stage["atlas"]["partitions_assigned"] == 0
    assert stage["evaluate"]["classes_skipped_done"] == classes_done
    assert not os.path.exists(os.path.join(out, "lease.json"))  # let go at the end
    same_outputs(clean_run["out"], out)
