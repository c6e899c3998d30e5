"""Token authentication on every node: cluster.yaml starts each node with RAY_AUTH_MODE=token,
the Ray floor has token auth, and a worker node joins a head only with the cluster's token
(a head and a worker started with `ray start` on 127.0.0.1, as cluster.yaml's commands do)."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile

import pytest
import yaml

from tests.conftest import ROOT
from tests.test_cluster_job import RAY, _free_port, _kill_head

NODES = """
import ray, sys
ray.init(address=sys.argv[1], log_to_driver=False)
print(sum(1 for n in ray.nodes() if n["Alive"]))
"""


def test_every_ray_start_line_of_cluster_yaml_turns_token_auth_on_and_the_floor_has_it():
    with open(os.path.join(ROOT, "cluster.yaml")) as f:
        config = yaml.safe_load(f)
    lines = [line for key in ("head_start_ray_commands", "worker_start_ray_commands") for line in config[key]
             if "ray start" in line]
    assert len(lines) == 2
    for line in lines:  # each command runs in a shell of its own: the variable is set on the line itself
        before = line[:line.index("ray start")]
        assert re.search(r"\bRAY_AUTH_MODE=token\b", before), f"starts Ray without token authentication: {line}"
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        floor = re.search(r'"ray\[[^\]]*\]>=(\d+)\.(\d+)', f.read())
    assert floor and (int(floor[1]), int(floor[2])) >= (2, 52), "token authentication came with Ray 2.52"


@pytest.mark.ray
def test_a_worker_node_joins_with_the_token_and_is_refused_without_it(tmp_path):
    token = secrets.token_hex(32)
    base = {**os.environ, "HOME": str(tmp_path), "RAY_USAGE_STATS_ENABLED": "0"}
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        base.pop(name, None)
    with_token = {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must stay short
    port = _free_port()
    address = f"127.0.0.1:{port}"

    def start(env: dict, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([RAY, "start", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *args],
                              env=env, capture_output=True, text=True, timeout=180)

    def alive(env: dict) -> int:
        res = subprocess.run([sys.executable, "-c", NODES, address], env=env, capture_output=True, text=True,
                             timeout=180)
        assert res.returncode == 0, res.stderr[-2000:]
        return int(res.stdout.split()[-1])

    try:
        head = start(with_token, "--head", f"--port={port}", "--num-cpus=0", f"--temp-dir={temp_dir}",
                     "--include-dashboard=false")
        assert head.returncode == 0, head.stdout[-2000:] + head.stderr[-2000:]
        joined = start(with_token, f"--address={address}", "--num-cpus=1")
        assert joined.returncode == 0, joined.stdout[-2000:] + joined.stderr[-2000:]
        assert alive(with_token) == 2
        # a node started as cluster.yaml's worker line was before: no RAY_AUTH_MODE, no token
        refused = start(base, f"--address={address}", "--num-cpus=1")
        assert refused.returncode != 0 and "InvalidAuthToken" in refused.stderr, refused.stderr[-2000:]
        assert alive(with_token) == 2  # it did not join
    finally:
        _kill_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
