"""cluster.yaml passes Ray's own launcher validation, and its shape is the one the README
describes: a head that runs no tasks, CPU and GPU worker types, per-type installs."""

from __future__ import annotations

import copy
import os

import yaml

from tests.conftest import ROOT


def test_cluster_yaml_is_valid_for_the_ray_launcher():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(open(os.path.join(ROOT, "cluster.yaml")))
    validate_config(prepare_config(copy.deepcopy(raw)))  # raises on any schema error
    types = raw["available_node_types"]
    assert types[raw["head_node_type"]]["resources"] == {"CPU": 0}  # the head runs no tasks
    assert types["gpu_worker"]["resources"]["GPU"] == 1 and "GPU" not in types["cpu_worker"]["resources"]
    gpu_setup = " ".join(types["gpu_worker"]["worker_setup_commands"])
    cpu_setup = " ".join(types["cpu_worker"]["worker_setup_commands"])
    assert "[gpu]" in gpu_setup and "[cpu]" not in gpu_setup and "[cpu]" in cpu_setup
    assert not raw["setup_commands"]  # nothing common: GPU nodes must not get faiss-cpu
    assert types["cpu_worker"]["labels"] == {"ace3d-node": "cpu"}  # what jobs/kinetics400.sh selects
    assert "ray.cpu_label_selector=[ace3d-node:cpu]" in open(os.path.join(ROOT, "jobs", "kinetics400.sh")).read()
    assert "~/.ray/auth_token" in raw["file_mounts"]  # token auth stays on across nodes
    assert all(t["max_workers"] >= t["min_workers"] for name, t in types.items() if name != "head")


def test_job_scripts_and_kinetics_config_exist_and_compose():
    from hydra import compose, initialize_config_dir

    from pipeline.config import CONF_DIR, register_configs

    for script in ("submit.sh", "kinetics400.sh"):
        path = os.path.join(ROOT, "jobs", script)
        assert os.access(path, os.X_OK), path
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for model in ("x3d_m", "slow_r50", "i3d_r50", "r2plus1d_r50"):
            cfg = compose("config", overrides=["dataset=kinetics400", "dataset.root=/nonexistent",
                                                "dataset.csv=/nonexistent/train.csv", f"model={model}", "ray=cluster"])
            assert cfg.dataset.kind == "csv" and cfg.dataset.max_videos_per_class == 100
            assert cfg.model.pretrained
