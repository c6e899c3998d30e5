"""What the resume checks cost: a rerun's `done_units` over a segment-like stage's markers,
with its checks (identity rules, the part footers read) and without the footer reads, and a
part written with and without the fsync before its rename, side by side in one process.

    .venv/bin/python bench/resume.py [--units 2000] [--videos-per-unit 4]

The stage writes `--units` units (two datasets each, one row group per video, as segment
writes supervoxels/ and label_volumes/) into a temporary folder on this machine's disk. The
last line is `footer_check_overhead=<with/without> fsync_overhead=<with/without>`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline import io  # noqa: E402
import pipeline.run_folder as run_folder  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, default=2000)
    ap.add_argument("--videos-per-unit", type=int, default=4)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="ace3d-resume-")
    try:
        folder = run_folder.RunFolder(root, "bench")
        group = pa.table({"video_id": ["v"] * 200, "x": list(range(200))})
        videos = {}
        t0 = time.perf_counter()
        for u in range(args.units):
            ids = [f"v{u}-{i}" for i in range(args.videos_per_unit)]
            videos.update({v: "stat:1:1" for v in ids})
            folder.write_unit("segment", f"{u:05d}", [("a", [group] * len(ids)), ("b", [group] * len(ids))],
                              [{"video_id": v, "row_group": i, "identity": "stat:1:1"} for i, v in enumerate(ids)],
                              "fp")
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        done = folder.done_units("segment", ["a", "b"], "fp", "bench", videos=videos)
        checked_s = time.perf_counter() - t0
        footer_ok = run_folder._footer_ok
        run_folder._footer_ok = lambda path: True
        t0 = time.perf_counter()
        folder.done_units("segment", ["a", "b"], "fp", "bench", videos=videos)
        unchecked_s = time.perf_counter() - t0
        run_folder._footer_ok = footer_ok
        assert done.num_rows == len(videos)

        t0 = time.perf_counter()
        for i in range(300):
            io.write_table(group, os.path.join(root, "sync", f"{i}.parquet"))
        synced = (time.perf_counter() - t0) / 300
        fsync = io._fsync
        io._fsync = lambda path: None
        t0 = time.perf_counter()
        for i in range(300):
            io.write_table(group, os.path.join(root, "nosync", f"{i}.parquet"))
        unsynced = (time.perf_counter() - t0) / 300
        io._fsync = fsync
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.units} units, {len(videos)} videos, {2 * args.units} parts + {args.units} markers "
          f"(written in {write_s:.1f} s)")
    print(f"done_units: {checked_s:.2f} s with the footer checks, {unchecked_s:.2f} s without")
    print(f"one part written: {1000 * synced:.2f} ms with fsync, {1000 * unsynced:.2f} ms without")
    print(f"footer_check_overhead={checked_s / unchecked_s:.2f} fsync_overhead={synced / unsynced:.2f}")


if __name__ == "__main__":
    main()
