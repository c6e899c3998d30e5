"""The distribution a user installs: the wheel built from the project holds the package, Hydra's
configs and the demo weights, installs into a fresh environment and runs a job there from
another working directory, as the `ace3d` command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from tests.conftest import ROOT

SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "pipeline", "conf")
SHIPPED = ("pipeline/conf/config.yaml", "pipeline/conf/train.yaml", "pipeline/conf/model/demo.yaml",
           "pipeline/conf/segment/reference.yaml", "pipeline/models/weights/demo.pt",
           "pipeline/py.typed")


def run(*argv: str, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=600, **kw)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def build_wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of the project's sources (a build writes beside its sources)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (Path(ROOT) / name).is_dir():
            shutil.copytree(Path(ROOT) / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(Path(ROOT) / name, src / name)
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
        "--no-index", "-w", tmp_path / "dist", src)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    return wheel


@pytest.mark.ray  # the job in the fresh environment starts a Ray of its own
def test_the_wheel_installs_into_a_fresh_environment_and_runs_a_job_from_elsewhere(tmp_path):
    wheel = build_wheel(tmp_path)
    version = metadata.version("ace3d")
    assert wheel.name == f"ace3d-{version}-py3-none-any.whl"
    info = f"ace3d-{version}.dist-info"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(f"{info}/METADATA").decode()
        entry_points = z.read(f"{info}/entry_points.txt").decode()
    for name in (*SHIPPED, f"{info}/licenses/LICENSE"):
        assert name in names, name
    assert "ace3d = pipeline.commands.cli:main" in entry_points
    requires = [r.split(";")[0] for r in meta.splitlines() if r.startswith("Requires-Dist:")]
    assert "Requires-Dist: pandas>=2.0" in requires  # what the API returns
    assert not [r for r in requires if "==" in r], "exact pins belong in constraints.txt"

    # A fresh environment: its own site-packages with the wheel, the test environment's
    # dependencies on its path (a plain path entry: the editable install's finder stays out).
    env = tmp_path / "env"
    run(sys.executable, "-m", "venv", "--without-pip", env)
    python = env / "bin" / "python"
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    site = site.stdout.strip()
    Path(site, "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet",
        "--no-deps", "--no-index", wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(python, "-c", "import pipeline; print(pipeline.__file__)", cwd=elsewhere)
    assert where.stdout.startswith(site)

    ace3d = env / "bin" / "ace3d"
    assert run(ace3d, "--help", cwd=elsewhere).stdout.startswith("usage: ace3d <command>")
    shown = run(ace3d, "run", "--help", cwd=elsewhere).stdout
    assert "concepts.k = " in shown and "x3d_m" in shown  # the configs shipped in the wheel
    run(ace3d, "run", "dataset.synthetic.videos_per_class=2", f"dataset.root={tmp_path / 'corpus'}",
        "run.output_dir=out", "segment=reference", "run.stages=[ingest,segment,activate]",
        "ray.num_cpus=1", cwd=elsewhere)
    record = json.loads((elsewhere / "out" / "run.json").read_text())  # relative: from where it ran
    assert record["versions"]["ace3d"] == version
    assert record["git_commit"] is None  # an installed package, not a checkout
    assert record["stages"]["activate"]["videos_activated"] == 6  # the shipped demo weights
