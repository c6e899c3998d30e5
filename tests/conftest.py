"""Shared helpers: real video files made with PyAV, the CLI as a user runs it, a small
synthetic corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_video(path: str, frames: int = 20, size: tuple[int, int] = (48, 64), fps: int = 10, seed: int = 0) -> np.ndarray:
    """A real mp4 (H.264) of moving noise blocks; returns the frames written."""
    from pipeline.data.video import write_video

    rng = np.random.default_rng(seed)
    h, w = size
    base = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    video = np.stack([np.roll(base, 2 * t, axis=1) for t in range(frames)])
    write_video(path, video, fps=fps)
    return video


def run_cli(*args: str, module: str = "pipeline", timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m <module> <args>` as a user would, from the project root."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """The default job (segment=fine, the demo model, every stage up to the report) on 12
    synthetic videos per class, with the randomisation check; shared by the explanation and
    report tests."""
    base = tmp_path_factory.mktemp("explain")
    out = base / "run"
    args = [f"dataset.root={base / 'corpus'}", "dataset.synthetic.videos_per_class=12", "dataset.synthetic.seed=7",
            "concepts.randomisation_check=true"]
    res = run_cli(f"run.output_dir={out}", *args)
    assert res.returncode == 0, res.stderr[-3000:]
    return {"out": str(out), "args": args, "stdout": res.stdout, "record": json.load(open(out / "run.json"))}
