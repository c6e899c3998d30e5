"""Which concepts two runs share: two runs over the same videos and segmentation (another model,
another checkpoint of one model, a randomised copy as the control) have their concepts matched
one-to-one per class by the overlap of their member supervoxels, and each side's TCAV and
causal importance set beside the match.

    ace3d compare run_a=<run folder> run_b=<run folder> [output=<folder>] [min_jaccard=0.1]

Both runs draw a class's discovery videos the same way (the same videos, labels and
`concepts.seed`), so their concepts are clusters of the same supervoxels. Per class, the
Jaccard index of every pair of member sets (all layers of each side) is the similarity, and the
Hungarian assignment keeps the one-to-one matching of largest total overlap; pairs below
`min_jaccard` stay unmatched. A matched pair is `shared` when both concepts are significant,
`a only` or `b only` when one is; an unmatched significant concept is its side's only.

Written to `output` (default `<run_a>/comparison`): comparison.parquet (`schemas.COMPARISON`),
comparison.json (the summary: per side, the share of its significant concepts matched to a
significant one) and index.html (the shared pairs' clips side by side).
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import io, schemas
from pipeline.run_folder import CONCEPT_MEMBERS, RUN_JSON, VIDEOS, RunFolder, RunFolderError

USAGE = "ace3d compare run_a=<run folder> run_b=<run folder> [output=<folder>] [min_jaccard=0.1]"
PAGE_PAIRS = 24  # shared pairs shown on the page with their clips


def _same_inputs(a: RunFolder, b: RunFolder) -> None:
    """Stop unless both runs hold the same videos, clip and segmentation."""
    ids = [sorted(f.read(VIDEOS, columns=["video_id"]).column("video_id").to_pylist())
           for f in (a, b)]
    if ids[0] != ids[1]:
        raise RunFolderError(f"{a.root} and {b.root} hold other videos ({len(ids[0])} and "
                             f"{len(ids[1])}): concepts match only over the same videos")
    from pipeline.params import output_settings
    from pipeline.segmentation.supervoxels import SegmentParams

    configs = [io.read_json(f.path(RUN_JSON))["config"] for f in (a, b)]
    decide = {"clip": lambda c: c["clip"],
              "segment": lambda c: output_settings(SegmentParams, c["segment"]),
              "concepts.seed and discovery_fraction": lambda c: [
                  c["concepts"][k] for k in ("seed", "discovery_fraction")]}
    for what, of in decide.items():
        if of(configs[0]) != of(configs[1]):
            raise RunFolderError(f"{a.root} and {b.root} differ in their {what} settings: concepts "
                                 "match only over the same supervoxels of the same videos")


def _concepts(folder: RunFolder) -> tuple[list[dict[str, Any]], dict[str, set]]:
    rows = folder.concept_view(["target_class", "layer", "concept", "significant", "tcav_mean",
                                "causal_importance"]).to_pylist()
    members: dict[str, set] = defaultdict(set)
    table = folder.read(CONCEPT_MEMBERS, columns=["concept", "video_id", "supervoxel_id"])
    for c, v, s in zip(*(table.column(n).to_pylist() for n in table.column_names)):
        members[c].add((v, s))
    return rows, members


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def match_class(a_rows: list[dict[str, Any]], b_rows: list[dict[str, Any]],
                a_members: dict[str, set], b_members: dict[str, set],
                min_jaccard: float) -> list[dict[str, Any]]:
    """One class's concepts matched one-to-one (Hungarian, on the members' Jaccard index):
    a row per matched pair, and one per concept left unmatched on either side."""
    from scipy.optimize import linear_sum_assignment

    sim = np.array([[jaccard(a_members[x["concept"]], b_members[y["concept"]]) for y in b_rows]
                    for x in a_rows]).reshape(len(a_rows), len(b_rows))
    pairs = [(i, j) for i, j in zip(*linear_sum_assignment(-sim))
             if sim[i, j] >= min_jaccard and sim[i, j] > 0]
    out = [_row(a_rows[i], b_rows[j], float(sim[i, j])) for i, j in pairs]
    in_a, in_b = {i for i, _ in pairs}, {j for _, j in pairs}
    out += [_row(x, None, None) for i, x in enumerate(a_rows) if i not in in_a]
    out += [_row(None, y, None) for j, y in enumerate(b_rows) if j not in in_b]
    return out


def _row(a: Any, b: Any, similarity: Any) -> dict[str, Any]:
    sig_a, sig_b = bool(a and a["significant"]), bool(b and b["significant"])
    status = ("shared" if sig_a and sig_b else "a only" if sig_a else "b only" if sig_b
              else "neither")
    side = {f"{key}_{s}": (r or {}).get(col) for s, r in (("a", a), ("b", b))
            for key, col in (("concept", "concept"), ("layer", "layer"), ("tcav", "tcav_mean"),
                             ("significant", "significant"), ("causal", "causal_importance"))}
    return {"target_class": (a or b)["target_class"], "jaccard": similarity, "status": status,
            **side}


def compare_runs(a: RunFolder, b: RunFolder, min_jaccard: float = 0.1) -> tuple[list[dict], dict]:
    """(rows of `schemas.COMPARISON`, summary) of two runs over the same videos."""
    _same_inputs(a, b)
    (a_rows, a_members), (b_rows, b_members) = _concepts(a), _concepts(b)
    by_class: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for side, side_rows in enumerate((a_rows, b_rows)):
        for r in side_rows:
            by_class[r["target_class"]][side].append(r)
    rows = []
    for k in sorted(by_class):
        rows += match_class(*by_class[k], a_members, b_members, min_jaccard)
    summary: dict[str, Any] = {"run_a": a.root, "run_b": b.root, "min_jaccard": min_jaccard,
                               "pairs": sum(r["jaccard"] is not None for r in rows),
                               "shared": sum(r["status"] == "shared" for r in rows)}
    for s in ("a", "b"):
        sig = [r for r in rows if r[f"significant_{s}"]]
        summary[f"significant_{s}"] = len(sig)
        summary[f"share_{s}_matched_significant"] = (
            round(summary["shared"] / len(sig), 4) if sig else None)
    matched = [r["jaccard"] for r in rows if r["jaccard"] is not None]
    summary["mean_jaccard_of_pairs"] = round(float(np.mean(matched)), 4) if matched else None
    return rows, summary


def page(a: RunFolder, b: RunFolder, rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """The shared pairs, their clips side by side (inline: the page is one file)."""
    from pipeline.concept_clips import concept_clips, inline_clip
    from pipeline.report.page import head
    from pipeline.report.render import esc, fmt

    clip = [io.read_json(f.path(RUN_JSON))["config"]["clip"] for f in (a, b)]

    def clips(folder: RunFolder, settings: dict[str, Any], concept: str, k: str) -> str:
        return "".join(inline_clip(c.outlined(), c.video_id)
                       for c in concept_clips(folder, settings, concept, 2, k))

    shared = sorted((r for r in rows if r["status"] == "shared"), key=lambda r: -r["jaccard"])
    body = "".join(f"<tr><td>{esc(r['target_class'])}</td><td>{fmt(r['jaccard'])}</td>"
                   f"<td>{esc(r['concept_a'])} (TCAV {fmt(r['tcav_a'])})<br>"
                   f"{clips(a, clip[0], r['concept_a'], r['target_class'])}</td>"
                   f"<td>{esc(r['concept_b'])} (TCAV {fmt(r['tcav_b'])})<br>"
                   f"{clips(b, clip[1], r['concept_b'], r['target_class'])}</td></tr>"
                   for r in shared[:PAGE_PAIRS])
    facts = ", ".join(f"{esc(k)} {esc(v)}" for k, v in summary.items())
    return (head("3D ACE report: concepts two runs share")
            + f"<body><main><h1>Concepts two runs share</h1><p class=meta>{facts}</p>"
            "<table><tr><th>class</th><th>Jaccard</th><th>run a</th><th>run b</th></tr>"
            f"{body}</table></main></body></html>\n")


def parse(argv: list[str]) -> dict[str, str]:
    args = {}
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq or key not in ("run_a", "run_b", "output", "min_jaccard"):
            raise ValueError(f"{arg!r}: {USAGE}")
        args[key] = value
    if "run_a" not in args or "run_b" not in args:
        raise ValueError(f"run_a and run_b are needed: {USAGE}")
    return args


def main(argv: list[str]) -> int:
    from pipeline.commands.cli import fail

    try:
        args = parse(argv)
        min_jaccard = float(args.get("min_jaccard", 0.1))
        a, b = RunFolder(args["run_a"]), RunFolder(args["run_b"])
        for f in (a, b):
            if not f.exists(RUN_JSON):
                raise RunFolderError(f"{f.root} is not a run folder (no {RUN_JSON})")
        rows, summary = compare_runs(a, b, min_jaccard)
    except (ValueError, RunFolderError) as e:
        return fail(str(e))
    out = args.get("output") or a.path("comparison")
    os.makedirs(out, exist_ok=True)
    io.write_table(pa.Table.from_pylist(rows, schema=schemas.COMPARISON),
                   os.path.join(out, "comparison.parquet"))
    io.write_json(summary, os.path.join(out, "comparison.json"))
    io.write_bytes(page(a, b, rows, summary).encode(), os.path.join(out, "index.html"))
    print(" ".join(f"{k}={v}" for k, v in summary.items() if k not in ("run_a", "run_b")))
    print(out)
    return 0


if __name__ == "__main__":
    from pipeline.commands.cli import run_module

    sys.exit(run_module("compare", sys.argv[1:]))
