"""Placement on a multi-node cluster simulated on this machine (ray.cluster_utils.Cluster): a
head that runs nothing, two CPU-only nodes and one node advertising a GPU, labelled as
cluster.yaml labels them. Segmentation tasks must run on the CPU nodes (Ray on its own only
prefers non-GPU nodes: without the label selector a third of the tasks landed on the GPU
node), the model actor on the GPU node (it falls back to the CPU device there, as no real GPU
exists)."""

from __future__ import annotations

import os

import pytest

from tests.conftest import compose

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
        yield {"address": cluster.address, "cpu": {n.node_id for n in cpu}, "gpu": gpu.node_id}
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_segmentation_runs_on_cpu_nodes_and_the_model_actor_on_the_gpu_node(three_node_cluster, tmp_path):
    import ray

    from pipeline.job import run_job

    cfg = compose(f"run.output_dir={tmp_path / 'run'}", f"dataset.root={tmp_path / 'corpus'}",
                  "dataset.synthetic.videos_per_class=3", "segment=reference",
                  f"ray.address={three_node_cluster['address']}", "ray.cpu_label_selector=[ace3d-node:cpu]",
                  "run.stages=[ingest,segment,activate]")
    record = run_job(cfg)
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
