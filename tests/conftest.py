"""Shared fixtures: real video files made with PyAV, a small synthetic corpus, one local
Ray instance per test module."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def small_synthetic(tmp_path_factory) -> str:
    """A small synthetic corpus (4 videos per class, seed 11)."""
    from pipeline.data.synthetic import SyntheticParams, ensure_corpus

    root = str(tmp_path_factory.mktemp("synthetic") / "corpus")
    ensure_corpus(root, SyntheticParams(videos_per_class=4, seed=11))
    return root
