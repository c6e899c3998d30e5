"""The whole default job at growing corpus sizes and class counts: does the driver's state stay
bounded, does throughput hold, does per-class work stay per class?

Each configuration runs `python -m pipeline` in a fresh process on N small synthetic clips
(16x56x56, `segment=reference`) spread over C class folders of links, explained with a
random-weight demo-architecture model that knows C classes (`model=factory`, this file's
`model`), at 56x56. run.json gives per stage the wall time and the driver's peak resident
memory so far. Two sweeps:

- sizes: N in --sizes at --size-classes classes;
- classes: C in --classes at --videos-per-class videos each.

The last line:
  driver_rss_kb_per_video=<growth of the driver's peak RSS per added video, largest N against
  smallest> throughput_ratio=<videos/s at the largest N / at the smallest>
  classes_time_ratio=<concepts+evaluate+report seconds per class, most classes / fewest>
Targets: <= 5, >= 0.85, <= 1.2.

  python bench/scale.py                                  # 500, 1000, 2000, 4000 videos; 5 and 50 classes
  python bench/scale.py --sizes 100,400 --classes 3,12   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("ingest", "segment", "activate", "concepts", "atlas", "evaluate", "report")


def model():
    """The factory the job loads (in its model actors): the demo architecture, random weights
    (seeded), as many classes as $SCALE_CLASSES."""
    import torch

    from pipeline.models.demo import create_demo_convnet

    torch.manual_seed(0)
    return create_demo_convnet(num_classes=int(os.environ["SCALE_CLASSES"]))


def corpus(base: str, videos: int) -> list[str]:
    """The synthetic clips (16 frames, 56x56), enough of them, generated once."""
    sys.path.insert(0, ROOT)
    from pipeline.data.synthetic import SyntheticParams, ensure_corpus

    per_class = -(-videos // 3)
    root = os.path.join(base, f"synthetic-{per_class}")
    ensure_corpus(root, SyntheticParams(videos_per_class=per_class, size=56, seed=3))
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".mp4"))
    return files[:videos] if len(files) >= videos else files


def class_folders(base: str, files: list[str], n: int, classes: int) -> str:
    """n clips as links in `classes` class folders (round robin)."""
    root = os.path.join(base, f"folders-n{n}-c{classes}")
    if not os.path.isdir(root):
        for i, f in enumerate(files[:n]):
            d = os.path.join(root, f"c{i % classes:02d}")
            os.makedirs(d, exist_ok=True)
            os.symlink(f, os.path.join(d, f"{os.path.basename(os.path.dirname(f))}-{os.path.basename(f)}"))
    return root


def run_job(base: str, files: list[str], n: int, classes: int) -> dict:
    """The default job in a fresh process, from scratch (a run folder left by an earlier sweep
    would resume: every stage skipped); returns its run.json."""
    out = os.path.join(base, f"run-n{n}-c{classes}")
    shutil.rmtree(out, ignore_errors=True)
    names = ",".join(f"c{i:02d}" for i in range(classes))
    args = [sys.executable, "-m", "pipeline", f"run.output_dir={out}", "dataset=folder",
            f"dataset.root={class_folders(base, files, n, classes)}", "segment=reference", "clip.height=56",
            "clip.width=56", "model=factory", "model.factory=bench.scale:model", "model.layers=[layer2,layer3]",
            "model.height=56", "model.width=56", f"model.class_names=[{names}]", "report.heatmap_videos=2"]
    t0 = time.monotonic()
    res = subprocess.run(args, cwd=ROOT, env={**os.environ, "SCALE_CLASSES": str(classes), "PYTHONPATH": ROOT},
                         capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"the job failed at n={n}, classes={classes}:\n{res.stderr[-4000:]}")
    record = json.load(open(os.path.join(out, "run.json")))
    record["process_wall_s"] = time.monotonic() - t0
    return record


def summary(n: int, classes: int, record: dict) -> dict:
    stages = record["stages"]
    wall = sum(stages[s]["wall_s"] for s in STAGES if s in stages)
    row = {"videos": n, "classes": classes, "wall_s": round(wall, 1), "videos_per_s": round(n / wall, 3),
           "peak_rss_mb": max(stages[s].get("driver_peak_rss_mb", 0) for s in STAGES if s in stages),
           "reduction_s_per_class": round(sum(stages[s]["wall_s"] for s in ("concepts", "atlas", "evaluate", "report")
                                              if s in stages) / classes, 3)}
    for s in STAGES:
        if s in stages:
            row[s] = (round(stages[s]["wall_s"], 1), stages[s].get("driver_peak_rss_mb"))
    return row


def show(row: dict) -> None:
    per_stage = "  ".join(f"{s} {row[s][0]:.1f}s/{row[s][1]:.0f}MB" for s in STAGES if s in row)
    print(f"N={row['videos']:5d} C={row['classes']:3d}  {row['wall_s']:7.1f} s  {row['videos_per_s']:.2f} videos/s  "
          f"driver peak {row['peak_rss_mb']:.0f} MB  reduction {row['reduction_s_per_class']:.2f} s/class  "
          f"[{per_stage}]", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="500,1000,2000,4000")
    ap.add_argument("--size-classes", type=int, default=10)
    ap.add_argument("--classes", default="5,50")
    ap.add_argument("--videos-per-class", type=int, default=20)
    ap.add_argument("--work", default=None, help="a folder for the corpus and the runs (default: a temporary one)")
    a = ap.parse_args()
    sizes = [int(x) for x in a.sizes.split(",")]
    class_counts = [int(x) for x in a.classes.split(",")]
    base = a.work or tempfile.mkdtemp(prefix="scale-")
    files = corpus(base, max(max(sizes), max(class_counts) * a.videos_per_class))
    print(f"work folder {base}; {len(files)} clips of 16x56x56", flush=True)
    by_size = []
    for n in sizes:
        by_size.append(summary(n, a.size_classes, run_job(base, files, n, a.size_classes)))
        show(by_size[-1])
    by_classes = []
    for c in class_counts:
        n = c * a.videos_per_class
        by_classes.append(summary(n, c, run_job(base, files, n, c)))
        show(by_classes[-1])
    json.dump({"sizes": by_size, "classes": by_classes}, open(os.path.join(base, "scale.json"), "w"), indent=1)
    small, large = by_size[0], by_size[-1]
    rss = (large["peak_rss_mb"] - small["peak_rss_mb"]) * 1024 / max(1, large["videos"] - small["videos"])
    few, many = by_classes[0], by_classes[-1]
    print(f"driver_rss_kb_per_video={rss:.2f} throughput_ratio={large['videos_per_s'] / small['videos_per_s']:.3f} "
          f"classes_time_ratio={many['reduction_s_per_class'] / few['reduction_s_per_class']:.3f}")


if __name__ == "__main__":
    main()
