"""`python -m pipeline.train`: the shipped demo model meets its targets on unseen data, and a
folder corpus trains into a checkpoint that the main job loads."""

from __future__ import annotations

import os
import re

from tests.conftest import make_video, run_cli


def _last_line_metrics(stdout: str) -> dict[str, float]:
    last = stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"accuracy=([0-9.]+) shuffled_accuracy=([0-9.]+)", last)
    assert m, f"unexpected last line: {last!r}"
    return {"accuracy": float(m.group(1)), "shuffled_accuracy": float(m.group(2))}


def test_shipped_demo_model_recognises_motion_on_a_fresh_synthetic_set(tmp_path):
    """A synthetic set with a seed the model never saw (it was trained on seed 1000)."""
    res = run_cli("model=demo", "train.epochs=0", "dataset.synthetic.seed=4242",
                  "dataset.synthetic.videos_per_class=16", f"dataset.root={tmp_path / 'fresh'}",
                  module="pipeline.train")
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = _last_line_metrics(res.stdout)
    assert metrics["accuracy"] >= 0.9
    assert metrics["shuffled_accuracy"] <= 1.5 / 3  # falls to chance without the motion
    assert os.path.getsize(os.path.join(os.path.dirname(__file__), "..", "pipeline", "models", "weights",
                                        "demo.pt")) <= 5 * 1024 * 1024


def test_training_on_a_folder_corpus_writes_a_checkpoint_the_job_loads(tmp_path):
    root = tmp_path / "corpus"
    for c, cls in enumerate(("left", "right")):
        for i in range(3):
            make_video(str(root / cls / f"v{i}.mp4"), frames=16, size=(64, 64), seed=10 * c + i)
    (root / "left" / "broken.mp4").write_bytes(b"")
    ckpt = tmp_path / "model.pt"
    res = run_cli("dataset=folder", f"dataset.root={root}", "train.epochs=1", "train.batch_size=2",
                  f"train.output={ckpt}", module="pipeline.train")
    assert res.returncode == 0, res.stderr[-3000:]
    _last_line_metrics(res.stdout)
    assert "skipping" in res.stdout + res.stderr  # the broken file is reported, not fatal
    from pipeline.models.registry import load_model

    loaded = load_model({"name": "checkpoint", "path": str(ckpt)})
    assert loaded.class_names == ["left", "right"]
    evaluated = run_cli("model=checkpoint", f"model.path={ckpt}", "train.epochs=0", "dataset=folder",
                        f"dataset.root={root}", module="pipeline.train")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    _last_line_metrics(evaluated.stdout)
