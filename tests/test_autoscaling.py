"""The job on an autoscaling cluster from zero workers, as cluster.yaml makes one: Ray's fake
multi-node provider (the autoscaler's own test harness: each "instance" it launches is a real
raylet on this machine), autoscaler v2 as cluster.yaml's head runs it, a head with no CPUs and
two worker types from zero, labelled as cluster.yaml labels them. Nothing is up when the job
starts: its segmentation tasks (label selector ace3d-node:cpu) make the autoscaler launch the
CPU type, its model actor (one GPU) the GPU type. The GPU type advertises a GPU no device backs;
the actor falls back to the CPU there."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests.conftest import run_cli
from tests.test_cluster_job import _free_port, _kill_head

pytestmark = [pytest.mark.ray, pytest.mark.own_cluster]  # (its drivers are processes of their own)
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
FAKE_HEAD = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000"  # the fake provider's head id


def autoscaler_config(gcs: str) -> dict:
    """cluster.yaml's shape on the fake provider: the head runs nothing; the worker types start
    from zero with cluster.yaml's labels."""
    return {
        "cluster_name": "ace3d-fake", "max_workers": 3, "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
        # the fake provider by its class: its type name needs a defaults file the wheel leaves out
        "provider": {"type": "external", "module": "ray.autoscaler._private.fake_multi_node.node_provider."
                     "FakeMultiNodeProvider", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "launch_multiple": True, "head_node_id": FAKE_HEAD,
                     "gcs_address": gcs},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},  # the fake head
            "cpu_worker": {"resources": {"CPU": 1, "object_store_memory": 200 * 2**20}, "labels": {"ace3d-node": "cpu"},
                           "node_config": {}, "min_workers": 0, "max_workers": 2},
            "gpu_worker": {"resources": {"CPU": 1, "GPU": 1, "object_store_memory": 200 * 2**20},
                           "labels": {"ace3d-node": "gpu"}, "node_config": {}, "min_workers": 0, "max_workers": 1},
        },
        "head_node_type": "ray.head.default", "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


@pytest.fixture(scope="module")
def autoscaling_cluster(tmp_path_factory):
    port = _free_port()
    gcs = f"127.0.0.1:{port}"
    config = tmp_path_factory.mktemp("autoscaler") / "cluster.json"
    config.write_text(json.dumps(autoscaler_config(gcs)))
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_enable_autoscaler_v2": "1",
           "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD, "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD,
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}  # token auth: tests/test_cluster_auth.py
    env.pop("RAY_ADDRESS", None)
    try:
        start = subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=0",
                                f"--autoscaling-config={config}", f"--temp-dir={temp_dir}", "--include-dashboard=false",
                                "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=180)
        assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
        yield {"address": gcs, "config": str(config), "temp_dir": temp_dir}
    finally:
        _kill_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _job(cluster: dict, out, *more: str):
    """`python -m pipeline` on the cluster, a driver process of its own as `ray job submit` runs
    one on the head (a pytest process that ran other Ray sessions before is not one)."""
    return run_cli(f"run.output_dir={out}", f"dataset.root={out.parent / 'corpus'}",
                   "dataset.synthetic.videos_per_class=2", "segment=reference", "segment.videos_per_part=2",
                   f"ray.address={cluster['address']}", f"ray.autoscaler_config={cluster['config']}", *more,
                   timeout=600, env={"RAY_AUTH_MODE": "disabled"})


def test_from_zero_workers_segmentation_runs_on_the_cpu_type_and_the_model_actor_on_the_gpu_type(
        autoscaling_cluster, tmp_path):
    res = _job(autoscaling_cluster, tmp_path / "run", "ray.cpu_label_selector=[ace3d-node:cpu]",
               "activate.gpus_per_actor=1", "activate.actor_wait_s=240", "run.stages=[ingest,segment,activate]")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    record = json.load(open(tmp_path / "run" / "run.json"))
    nodes = record["nodes"]
    kind = {node: info["labels"].get("ace3d-node") for node, info in nodes.items()}
    seg, act = record["stages"]["segment"], record["stages"]["activate"]
    assert seg["videos_segmented"] == 6 and act["videos_activated"] == 6
    assert {kind[n] for n in seg["videos_per_node"]} == {"cpu"}, (seg["videos_per_node"], kind)
    assert act["actor_nodes"] and {kind[n] for n in act["actor_nodes"]} == {"gpu"}, (act["actor_nodes"], kind)
    assert all(nodes[n]["resources"].get("GPU") == 1 for n in act["actor_nodes"])
    assert sum(1 for n in nodes.values() if n["labels"].get("ace3d-node") == "gpu") == 1  # launched for the actor


def test_a_label_selector_no_node_type_carries_stops_before_any_work(autoscaling_cluster, tmp_path):
    res = _job(autoscaling_cluster, tmp_path / "run", "ray.cpu_label_selector=[ace3d-node:cpu-large]")
    assert res.returncode == 2, res.stderr[-3000:]
    assert re.search(r"error: config key 'ray.cpu_label_selector'.*no node type of its autoscaler \(cpu_worker, "
                     r"gpu_worker\)", res.stderr), res.stderr[-3000:]
    assert not (tmp_path / "run" / "videos.parquet").exists()
