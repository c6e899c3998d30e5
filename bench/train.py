"""The training recipe on a small-object motion task, side by side in one process: the demo
network and recipe of `python -m pipeline.train` against the ones it replaced (a 7x7 stem of
stride 4, a mean-pooled head, 20 epochs of the same one-cycle schedule, no early stopping).

    .venv/bin/python bench/train.py [--videos-per-class 200] [--actor-scale 0.4] [--distractors 5]

The corpus is the synthetic one with a small actor (`dataset.synthetic.actor_scale`: 0.4 makes
the arrow 9 x 6 px, smaller than the distractors), generated under data/bench-train/ on first
use; both sides train on the same clips, validate on the same clips and are measured on the
same held-out clips (a quarter of each class). The last line is `accuracy=<held-out, current>
baseline_accuracy=<held-out, replaced> shuffled_accuracy=<current, frames shuffled in time>
train_seconds_ratio=<current / replaced>`.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
import time

import numpy as np
import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pipeline.config import TrainConfig  # noqa: E402
from pipeline.data.synthetic import SyntheticParams, ensure_corpus  # noqa: E402
from pipeline.data.video import ClipSpec  # noqa: E402
from pipeline.models.demo import create_conv_block, create_demo_convnet  # noqa: E402
from pipeline.train import fit, load_clips, predict, shuffle_time, stratified_split, validation_split  # noqa: E402

MEAN, STD = (0.45,) * 3, (0.225,) * 3


class ReplacedDemoNet(nn.Module):
    """The demo network before 2026-12-02: one 7x7 stride-4 stem, global mean pooling."""

    def __init__(self, num_classes: int = 3, w: int = 16) -> None:
        super().__init__()
        self.stem = create_conv_block(3, w, (3, 7, 7), (1, 4, 4))
        self.layer1 = create_conv_block(w, 2 * w, (3, 3, 3), (1, 2, 2))
        self.layer2 = create_conv_block(2 * w, 4 * w, (3, 3, 3), (2, 2, 2))
        self.layer3 = create_conv_block(4 * w, 4 * w, (3, 3, 3), (1, 1, 1))
        self.head = nn.Linear(4 * w, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer3(self.layer2(self.layer1(self.stem(x)))).mean((2, 3, 4)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos-per-class", type=int, default=200)
    ap.add_argument("--actor-scale", type=float, default=0.4)
    ap.add_argument("--distractors", type=int, default=5)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    params = SyntheticParams(videos_per_class=args.videos_per_class, actor_scale=args.actor_scale,
                             num_distractors=args.distractors, seed=args.seed)
    root = os.path.join(ROOT, "data", "bench-train",
                        f"seed{args.seed}-n{args.videos_per_class}-a{args.actor_scale}-d{args.distractors}")
    ensure_corpus(root, params)
    rows = [{"path": p, "label": p.split(os.sep)[-2]} for p in sorted(glob.glob(os.path.join(root, "*", "*.mp4")))]
    clips, rows = load_clips(rows, ClipSpec(num_frames=16, height=112, width=112))
    names = sorted({r["label"] for r in rows})
    labels = np.array([names.index(r["label"]) for r in rows])
    tc = TrainConfig()
    train_idx, held_idx = stratified_split(labels, tc.holdout_fraction, tc.seed)
    fit_idx, val_idx = validation_split(train_idx, labels, tc.val_fraction, tc.seed + 2)
    held = clips[held_idx]
    monitor = {"validation": (clips[val_idx], labels[val_idx]), "held-out": (held, labels[held_idx])}
    print(f"{len(fit_idx)} clips to train on, {len(val_idx)} to validate, {len(held_idx)} held out; "
          f"actor {params.actor_scale:g} x the default size, {params.num_distractors} distractors", flush=True)

    results = {}
    for side in ("replaced", "current"):
        torch.manual_seed(tc.seed)
        if side == "current":
            model = create_demo_convnet(num_classes=len(names))
            kwargs = {"epochs": tc.epochs, "monitor": monitor, "select": "validation", "patience": tc.patience}
        else:
            model = ReplacedDemoNet(num_classes=len(names))
            kwargs = {"epochs": 20, "monitor": monitor}
        print(f"--- {side} network and recipe", flush=True)
        t0 = time.time()
        history = fit(model, clips[fit_idx], labels[fit_idx], MEAN, STD, batch_size=tc.batch_size, lr=tc.lr,
                      weight_decay=tc.weight_decay, seed=tc.seed, **kwargs)
        seconds = time.time() - t0
        acc = float((predict(model, held, MEAN, STD) == labels[held_idx]).mean())
        shuffled = float((predict(model, shuffle_time(held, tc.seed + 1), MEAN, STD) == labels[held_idx]).mean())
        results[side] = {"accuracy": acc, "shuffled": shuffled, "seconds": seconds, "epochs": len(history),
                         "train": history[-1]["train"]}
        print(f"{side}: held-out accuracy {acc:.3f}, shuffled {shuffled:.3f}, last train accuracy "
              f"{history[-1]['train']:.3f}, {len(history)} epochs in {seconds:.0f} s", flush=True)
    cur, old = results["current"], results["replaced"]
    print(f"accuracy={cur['accuracy']:.4f} baseline_accuracy={old['accuracy']:.4f} "
          f"shuffled_accuracy={cur['shuffled']:.4f} train_seconds_ratio={cur['seconds'] / old['seconds']:.2f}")


if __name__ == "__main__":
    main()
