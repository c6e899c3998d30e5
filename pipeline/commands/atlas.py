"""`ace3d atlas query run_dir=<run folder> <what> [layer=...] [k=10] [nprobe=...]` (or
`python -m pipeline.atlas query ...`): the supervoxels of a finished run nearest a supervoxel
(video_id=... supervoxel_id=...), a global concept (global_concept=7) or a concept of
concepts.parquet (concept=<name>), one per line, nearest first (format=json: one JSON object
per line)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from pipeline import io
from pipeline.commands.cli import COMMANDS
from pipeline.run_folder import RunFolder

USAGE = COMMANDS["atlas"].usage
KEYS = ("run_dir", "video_id", "supervoxel_id", "global_concept", "concept", "layer", "k", "nprobe", "format")


def parse(argv: list[str]) -> dict[str, str]:
    if not argv or argv[0] != "query":
        raise ValueError(f"the command is query: {USAGE}")
    args: dict[str, str] = {}
    for a in argv[1:]:
        key, eq, value = a.partition("=")
        if not eq:
            raise ValueError(f"'{a}': arguments are key=value ({USAGE})")
        if key not in KEYS:
            raise ValueError(f"unknown key '{key}'; known: {', '.join(KEYS)}")
        args[key] = value
    if "run_dir" not in args:
        raise ValueError(f"run_dir is missing: {USAGE}")
    given = [w for w in ("video_id", "global_concept", "concept") if w in args]
    if len(given) != 1:
        raise ValueError(f"give one of video_id (with supervoxel_id), global_concept or concept: {USAGE}")
    if ("video_id" in args) != ("supervoxel_id" in args):
        raise ValueError("video_id and supervoxel_id go together")
    return args


def query_of(args: dict[str, str]) -> Any:
    def integer(key: str) -> int:
        try:
            return int(args[key])
        except ValueError:
            raise ValueError(f"{key}={args[key]!r}: must be an integer") from None

    if "video_id" in args:
        return (args["video_id"], integer("supervoxel_id"))
    if "global_concept" in args:
        return integer("global_concept")
    return args["concept"]


def main(argv: list[str]) -> int:
    from pipeline.run_search import COLUMNS, Atlas

    try:
        args = parse(argv)
        query = query_of(args)
        k = int(args.get("k", 10))
        nprobe = int(args["nprobe"]) if "nprobe" in args else None
        fmt = args.get("format", "table")
        if fmt not in ("table", "json"):
            raise ValueError(f"format={fmt!r}: must be table or json")
        run_dir = args["run_dir"] if io.is_uri(args["run_dir"]) else os.path.abspath(args["run_dir"])
        rows = Atlas(RunFolder(run_dir)).nearest(query, k=k, layer=args.get("layer"), nprobe=nprobe)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    if fmt == "json":
        for r in rows:
            print(json.dumps(r))
    else:
        print("\t".join(COLUMNS))
        for r in rows:
            print("\t".join(f"{r[c]:.4f}" if c == "distance" else str(r[c]) for c in COLUMNS))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
