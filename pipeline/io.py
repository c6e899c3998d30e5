"""Reading and writing run outputs.

Writers replace files atomically (write `x.part`, then rename), so a crash never leaves a
half-written file that a rerun would trust. Readers are the public API for people who
analyse a run.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def write_table(table: pa.Table, path: str) -> None:
    """Write a Parquet file atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".part"
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def write_json(obj: Any, path: str) -> None:
    """Write JSON atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".part"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    os.replace(tmp, path)


def read_videos(run_dir: str) -> pa.Table:
    """`videos.parquet` of a run: one row per input video, ok or failed."""
    return pq.read_table(os.path.join(run_dir, "videos.parquet"))


def read_run(run_dir: str) -> dict[str, Any]:
    """`run.json` of a run."""
    with open(os.path.join(run_dir, "run.json")) as f:
        return json.load(f)
