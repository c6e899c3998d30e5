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

import psutil
import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.ray
RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Ray's own readiness signal for job submission: the Jobs API hands a job to the head node's
# dashboard agent once the agent has published its address in the GCS (the key the job head
# reads, as Ray's test utilities wait for it). Run in a subprocess with the head's token.
AGENT_READY = """
import json, sys, time
from ray._raylet import GcsClient
gcs = GcsClient(address=sys.argv[1])
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    head = gcs.internal_kv_get(b"head_node_id", namespace=b"job", timeout=5)
    if head and gcs.internal_kv_get(b"DASHBOARD_AGENT_ADDR_NODE_ID_PREFIX:" + head, namespace=b"dashboard", timeout=5):
        sys.exit(0)
    time.sleep(0.2)
sys.exit(1)
"""


def _logs(temp_dir: str,
          names: tuple[str, ...] = ("dashboard_agent.log", "dashboard_JobHead.log", "raylet.err")) -> str:
    out = []
    for name in names:
        path = os.path.join(temp_dir, "session_latest", "logs", name)
        if os.path.exists(path):
            out.append(f"--- {name} (last lines) ---\n" + "".join(open(path, errors="replace").readlines()[-40:]))
    return "\n".join(out) or f"(no logs under {temp_dir}/session_latest/logs)"


def _kill_head(temp_dir: str) -> None:
    """Only this head's processes (`ray stop` would stop every Ray cluster on the machine): those
    naming its temp dir on their command line, and their children (the dashboard agent and the
    workers rename themselves, ray::DashboardAgent, ray::IDLE, and would keep their ports)."""
    roots = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(temp_dir in arg for arg in proc.info["cmdline"] or []):
            roots.append(proc)
    family = {p.pid: p for r in roots for p in [r, *_children(r)]}
    for p in family.values():
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(family.values()), timeout=30)


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head on loopback with token authentication, as cluster.yaml runs it: the token
    made first with `ray get-auth-token --generate` in a temporary HOME (~/.ray/auth_token),
    the dashboard (Jobs API) on a free port, the dashboard agent on a port of its own choosing
    (its fixed default, 52365, may be held by another Ray on the machine: the agent would then
    never register and every submission would fail)."""
    home = tmp_path / "home"
    home.mkdir()
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must stay short
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    token = subprocess.run([RAY, "get-auth-token", "--generate"], env=env, capture_output=True, text=True, timeout=120)
    assert token.returncode == 0 and (home / ".ray" / "auth_token").exists(), token.stderr[-2000:]
    dashboard, gcs = _free_port(), _free_port()
    try:
        start = subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                                "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                                f"--temp-dir={temp_dir}", f"--dashboard-port={dashboard}",
                                "--dashboard-agent-listen-port=0", "--disable-usage-stats"],
                               env=env, capture_output=True, text=True, timeout=180)
        assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
        ready = subprocess.run([sys.executable, "-c", AGENT_READY, f"127.0.0.1:{gcs}", "240"], env=env,
                               capture_output=True, text=True, timeout=300)
        assert ready.returncode == 0, ("the head's dashboard agent never registered with the GCS:\n"
                                       + ready.stderr[-2000:] + _logs(temp_dir))
        yield {"env": env, "address": f"http://127.0.0.1:{dashboard}", "home": home, "temp_dir": temp_dir}
    finally:
        _kill_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_job_submitted_through_the_jobs_api_runs_to_completion(ray_head, tmp_path):
    out, corpus = tmp_path / "run", tmp_path / "corpus"
    env = {**ray_head["env"], "RAY_ADDRESS": ray_head["address"], "RAY": RAY, "JOB_PYTHON": sys.executable}
    res = subprocess.run(["bash", os.path.join(ROOT, "jobs", "submit.sh"), f"run.output_dir={out}",
                          f"dataset.root={corpus}", "dataset.synthetic.videos_per_class=4", "segment=reference",
                          "concepts.num_random_exp=5", "activate.gpus_per_actor=0",  # ray=cluster asks for GPUs
                          # the stages up to the concepts: the later ones run in other tests' jobs
                          "run.stages=[ingest,segment,activate,concepts]"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    log = res.stdout[-4000:] + res.stderr[-4000:]
    assert res.returncode == 0, log + "\n" + _logs(ray_head["temp_dir"])
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
