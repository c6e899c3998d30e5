"""Placement on a multi-node cluster simulated on this machine (ray.cluster_utils.Cluster): a
head that runs nothing, two CPU-only nodes and one node advertising a GPU, labelled as
cluster.yaml labels them. Segmentation tasks must run on the CPU nodes (Ray on its own only
prefers non-GPU nodes: without the label selector a third of the tasks landed on the GPU
node), the model actor on the GPU node (it falls back to the CPU device there, as no real GPU
exists). Then nodes are lost mid-stage, as spot nodes are: the job finishes with the clean
run's outputs, or stops after its wait and resumes."""

from __future__ import annotations

import glob
import json
import os
import threading
import time

import pytest

from tests.conftest import compose, same_outputs

pytestmark = [pytest.mark.ray, pytest.mark.own_cluster]


@pytest.fixture(scope="module")
def three_node_cluster():
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # the shared local Ray, if up: this driver joins the simulated cluster instead
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    cpu = [cluster.add_node(num_cpus=1, labels={"ace3d-node": "cpu"}) for _ in range(2)]
    gpu = cluster.add_node(num_cpus=1, num_gpus=1, labels={"ace3d-node": "gpu"})
    cluster.wait_for_nodes()
    try:
        yield {"address": cluster.address, "cpu": {n.node_id for n in cpu}, "gpu": gpu.node_id, "cluster": cluster,
               "nodes": {"cpu": cpu, "gpu": [gpu]}}
    finally:
        ray.shutdown()
        cluster.shutdown()


def _placement_job(cluster: dict, out: str, corpus: str, *more: str):
    return compose(f"run.output_dir={out}", f"dataset.root={corpus}", "dataset.synthetic.videos_per_class=3",
                   "segment=reference", f"ray.address={cluster['address']}", "ray.cpu_label_selector=[ace3d-node:cpu]",
                   "run.stages=[ingest,segment,activate]", *more)


def test_segmentation_runs_on_cpu_nodes_and_the_model_actor_on_the_gpu_node(three_node_cluster, tmp_path_factory):
    import ray

    from pipeline.job import run_job

    base = tmp_path_factory.mktemp("placement")
    three_node_cluster["clean"] = (str(base / "run"), str(base / "corpus"))
    record = run_job(_placement_job(three_node_cluster, *three_node_cluster["clean"]))
    assert ray.is_initialized()
    seg, act = record["stages"]["segment"], record["stages"]["activate"]
    assert seg["videos_segmented"] == 9 and act["videos_activated"] == 9
    assert sum(seg["videos_per_node"].values()) == 9
    assert set(seg["videos_per_node"]) <= three_node_cluster["cpu"], seg["videos_per_node"]
    assert act["actor_nodes"] == [three_node_cluster["gpu"]]


def test_a_label_selector_no_node_matches_fails_before_any_work(three_node_cluster, tmp_path):
    from pipeline.config import ConfigError
    from pipeline.job import run_job

    cfg = compose(f"run.output_dir={tmp_path / 'run'}", f"dataset.root={tmp_path / 'corpus'}",
                  f"ray.address={three_node_cluster['address']}", "ray.cpu_label_selector=[ace3d-node:cpu-large]")
    with pytest.raises(ConfigError, match="ray.cpu_label_selector"):
        run_job(cfg)
    assert not (tmp_path / "run" / "videos.parquet").exists()


def test_a_local_job_on_a_machine_with_a_cluster_starts_its_own(three_node_cluster):
    """ray=local (no address, no RAY_ADDRESS) beside a running cluster, which Ray records as
    the machine's current one: the driver starts an embedded cluster of its own (left to
    `ray.init()`, it joined the running one and stopped there: num_cpus given)."""
    import subprocess
    import sys

    code = ("from pipeline.orchestration.runtime import init_ray\nimport ray\n"
            "init_ray({'address': None, 'num_cpus': 1, 'object_store_memory': None, 'include_dashboard': False})\n"
            "print(ray.get_runtime_context().gcs_address)\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] != three_node_cluster["address"]


def _raylet(node):
    import psutil
    from ray._private import ray_constants

    return psutil.Process(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)


def _running(node, task: str) -> bool:
    """Whether one of the node's workers is running `task` now (its process title)."""
    import psutil

    for proc in _raylet(node).children(recursive=True):
        try:
            if " ".join(proc.cmdline()).startswith(f"ray::{task}"):
                return True
        except psutil.Error:
            continue
    return False


def _lose(cluster, node) -> None:
    """A node gone as a spot node goes: its raylet and every process it started (the workers and
    actors, which would otherwise finish the call they hold before noticing) killed at once."""
    import psutil

    workers = _raylet(node).children(recursive=True)
    for proc in workers:
        proc.kill()
    cluster.remove_node(node, allow_graceful=False)
    psutil.wait_procs(workers, timeout=30)


def _markers(out: str, stage: str) -> int:
    return len(glob.glob(os.path.join(out, "_done", stage, "part-*.parquet")))


def _when(out: str, stage: str, done: int, action, busy=lambda: True) -> threading.Thread:
    """Run `action()` in a thread once `done` units of `stage` are marked done in `out` and
    `busy()` holds."""
    def watch() -> None:
        deadline = time.monotonic() + 600
        while (_markers(out, stage) < done or not busy()) and time.monotonic() < deadline:
            time.sleep(0.05)
        action()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_nodes_lost_mid_stage_the_job_retries_waits_and_resumes_to_the_clean_runs_outputs(three_node_cluster,
                                                                                           tmp_path):
    """A CPU node lost mid-segmentation: its unit runs again on the other. The only GPU node lost
    mid-activation with none to replace it: the stage stops after activate.actor_wait_s with an
    error that says so. Two GPU nodes come; the rerun resumes with an actor on each, and loses
    one of them mid-stage: the lost actor's units are retried on the other, a replacement asked
    for. The outputs equal the clean run's (the first test's, same corpus and settings, other
    units)."""
    import ray

    from pipeline.job import run_job
    from pipeline.orchestration.runtime import ResourceWaitError

    cluster, nodes = three_node_cluster["cluster"], three_node_cluster["nodes"]
    clean, corpus = three_node_cluster["clean"]
    out = str(tmp_path / "run")
    cfg = _placement_job(three_node_cluster, out, corpus, "segment.videos_per_part=1", "activate.videos_per_part=1",
                         "activate.actor_wait_s=8")
    # lost while it segments (idle between two units, it would hold nothing to retry)
    lose_cpu = _when(out, "segment", 2, lambda: _lose(cluster, nodes["cpu"].pop(0)),
                     busy=lambda: _running(nodes["cpu"][0], "segment_unit"))
    lose_gpu = _when(out, "activate", 1, lambda: _lose(cluster, nodes["gpu"].pop(0)))
    with pytest.raises(ResourceWaitError, match=r"activate: no model actor could start within 8 s "
                                                r"\(activate.actor_wait_s\).*rerun to resume"):
        run_job(cfg)
    lose_cpu.join(), lose_gpu.join()
    first = json.load(open(os.path.join(out, "run.json")))
    assert first["stages"]["segment"]["videos_segmented"] == 9
    assert first["stages"]["segment"]["units_retried"] >= 1
    done_before = _markers(out, "activate")
    assert 1 <= done_before < 9

    for _ in range(2):  # two GPU nodes come (Ray adds nodes from the main thread only)
        nodes["gpu"].append(cluster.add_node(num_cpus=1, num_gpus=1, labels={"ace3d-node": "gpu"}))
    cluster.wait_for_nodes()
    lost = nodes["gpu"][0].node_id
    lose_again = _when(out, "activate", done_before + 1, lambda: _lose(cluster, nodes["gpu"].pop(0)))
    record = run_job(cfg)
    lose_again.join()
    act = record["stages"]["activate"]
    assert act["videos_skipped_done"] == done_before and act["videos_activated"] == 9 - done_before
    assert act["actors_replaced"] >= 1 and act["units_retried"] >= 1
    assert len(act["actor_nodes"]) == 2 and lost in act["actor_nodes"]
    assert record["counts"]["videos_ok"] == 9
    same_outputs(clean, out, later_stages=False)
    assert ray.is_initialized()
