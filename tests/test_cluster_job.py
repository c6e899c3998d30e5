"""The job path as on a cluster: a real Ray head started with `ray start --head` on 127.0.0.1
(token authentication on), a small synthetic job submitted with jobs/submit.sh through the
Jobs API, its outputs checked, the head stopped."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import psutil
import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT

RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head on loopback with token authentication, as cluster.yaml runs it: the token
    made first with `ray get-auth-token --generate` in a temporary HOME (~/.ray/auth_token),
    the dashboard (Jobs API) on a free port."""
    home = tmp_path / "home"
    home.mkdir()
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must stay short
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    token = subprocess.run([RAY, "get-auth-token", "--generate"], env=env, capture_output=True, text=True, timeout=120)
    assert token.returncode == 0 and (home / ".ray" / "auth_token").exists(), token.stderr[-2000:]
    dashboard = _free_port()
    start = subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={_free_port()}",
                            "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                            f"--temp-dir={temp_dir}",
                            f"--dashboard-port={dashboard}", "--disable-usage-stats"],
                           env=env, capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
    address = f"http://127.0.0.1:{dashboard}"
    try:
        # The Jobs API answers "No available agent to submit job" until the node's dashboard
        # agent is up (seconds on a loaded machine): wait until a trivial job goes through.
        deadline, ready = time.monotonic() + 180, None
        while time.monotonic() < deadline:
            ready = subprocess.run([RAY, "job", "submit", "--address", address, "--", "true"], env=env,
                                   capture_output=True, text=True, timeout=120)
            if ready.returncode == 0:
                break
            time.sleep(2)
        assert ready is not None and ready.returncode == 0, ready.stderr[-2000:] if ready else "no try"
        yield {"env": env, "address": address, "home": home}
    finally:
        # Only this head's processes (`ray stop` would stop every Ray cluster on the machine):
        # they all name its temp dir on their command line.
        for proc in psutil.process_iter(["cmdline"]):
            if any(temp_dir in arg for arg in proc.info["cmdline"] or []):
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_job_submitted_through_the_jobs_api_runs_to_completion(ray_head, tmp_path):
    out, corpus = tmp_path / "run", tmp_path / "corpus"
    env = {**ray_head["env"], "RAY_ADDRESS": ray_head["address"], "RAY": RAY, "JOB_PYTHON": sys.executable}
    res = subprocess.run(["bash", os.path.join(ROOT, "jobs", "submit.sh"), f"run.output_dir={out}",
                          f"dataset.root={corpus}", "dataset.synthetic.videos_per_class=4", "segment=reference",
                          "concepts.num_random_exp=5"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    log = res.stdout[-4000:] + res.stderr[-4000:]
    assert res.returncode == 0, log
    assert "succeeded" in log.lower()
    record = json.load(open(out / "run.json"))
    assert record["counts"]["videos_in"] == 12 and record["counts"]["videos_ok"] == 12
    assert record["config"]["ray"]["address"] == "auto"  # joined the cluster, did not start one
    assert record["counts"]["concepts_found"] > 0
    assert pq.read_table(out / "concepts.parquet").num_rows == record["counts"]["concepts_found"]
    # without the token the Jobs API refuses the submission
    bad = subprocess.run([RAY, "job", "list", "--address", ray_head["address"]],
                         env={**env, "HOME": str(tmp_path), "RAY_AUTH_TOKEN": "wrong-token"},
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0
