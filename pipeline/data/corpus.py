"""Resolve a corpus into a manifest: one row per input video, never dropped.

Four layouts:
- class folders `root/<class>/<video>.<ext>` (Kinetics, UCF-101 and the synthetic corpus);
- a Kinetics-style CSV (`label,youtube_id,time_start,time_end,split`) plus a path template
  that names each row's file under `root`;
- `synthetic`: generated under `root` on first use, then read as class folders;
- `list`: a list of video files, each labelled by the name of its folder.

Every file in a class folder is an input, whatever its extension: one that is not a video
becomes a failed row later, so nothing disappears silently.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from pipeline.params import ParameterError

log = logging.getLogger(__name__)

CSV_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")
KINDS = ("synthetic", "folder", "csv", "list")


@dataclass
class Corpus:
    rows: list[dict[str, Any]]  # video_id, path, label, split, error (None or why it fails already), size, mtime_ns
    classes: list[str] = field(default_factory=list)  # sorted class names


def resolve_corpus(dataset: dict[str, Any]) -> Corpus:
    """The manifest of the corpus a `dataset` config section describes."""
    kind = dataset["kind"]
    if kind == "synthetic":
        from pipeline.data.synthetic import SyntheticParams, ensure_corpus
        from pipeline.params import from_section

        ensure_corpus(dataset["root"], from_section(SyntheticParams, dataset["synthetic"]))
        corpus = _folder_corpus(dataset["root"])
    elif kind == "folder":
        corpus = _folder_corpus(dataset["root"])
    elif kind == "csv":
        corpus = _csv_corpus(dataset["csv"], dataset["root"], dataset["path_template"])
    elif kind == "list":
        corpus = _list_corpus(list(dataset.get("videos") or []))
    else:
        raise ParameterError("kind", kind, f"unknown corpus kind; known: {list(KINDS)}")
    folded: dict[str, list[str]] = {}
    for k in corpus.classes:
        folded.setdefault(k.casefold(), []).append(k)
    clash = next((names for names in folded.values() if len(names) > 1), None)
    if clash:
        key = {"csv": "csv", "list": "videos"}.get(kind, "root")
        raise ParameterError(key, dataset.get(key), f"classes {clash} differ only in case: on case-insensitive "
                             "storage (macOS, SMB and NTFS shares) their outputs would share a folder; rename one")
    return _restrict(corpus, dataset)


def _folder_corpus(root: str) -> Corpus:
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if not classes:
        raise ParameterError("root", root, "no class folders (expected root/<class>/<video>)")
    rows = []
    for label in classes:
        folder = os.path.join(root, label)
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith(".") or name.endswith(".part"):
                    continue
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, root)
                rows.append(_row(os.path.splitext(rel)[0].replace(os.sep, "/"), os.path.abspath(path), label))
    _dedupe_ids(rows)
    return Corpus(rows=rows, classes=classes)


def _csv_corpus(csv_path: str, root: str, template: str) -> Corpus:
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise ParameterError("csv", csv_path, f"missing columns {missing} (expected {list(CSV_COLUMNS)}, "
                                                  f"found {header})")
        records = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    rows = []
    for line, r in enumerate(records, start=2):
        error = None
        try:
            ts, te = int(float(r["time_start"])), int(float(r["time_end"]))
        except ValueError:
            ts = te = 0
            error = f"bad time_start/time_end in {csv_path} line {line}: {r['time_start']!r}, {r['time_end']!r}"
        fields = {**r, "time_start": ts, "time_end": te, "label_": r["label"].replace(" ", "_")}
        try:
            rel = template.format(**fields)
        except (KeyError, ValueError, IndexError) as e:
            raise ParameterError("path_template", template, f"cannot fill it from {csv_path} line {line}: "
                                                            f"{e}") from None
        path = os.path.abspath(os.path.join(root, rel))
        if not r["label"]:
            error = error or f"an empty label in {csv_path} line {line}"
        elif not _under(root, path):
            error = error or f"{csv_path} line {line} names a file outside dataset.root: {path}"
        rows.append(_row(f"{r['youtube_id']}_{ts:06d}_{te:06d}", path, r["label"], r["split"] or None, error))
    _dedupe_ids(rows, keep_extension=False)
    return Corpus(rows=rows, classes=sorted({r["label"] for r in rows if r["label"]}))


def _list_corpus(paths: list[str]) -> Corpus:
    """A list of video files: each one's label is the name of its folder, its id
    `<folder>/<file name without extension>`."""
    if not paths:
        raise ParameterError("videos", paths, "an empty list of videos")
    rows = []
    for path in paths:
        path = os.path.abspath(os.path.expanduser(str(path)))
        label = os.path.basename(os.path.dirname(path))
        rows.append(_row(f"{label}/{os.path.splitext(os.path.basename(path))[0]}", path, label,
                         error=None if label else f"no label: {path} is not in a named folder"))
    _dedupe_ids(rows)
    return Corpus(rows=rows, classes=sorted({r["label"] for r in rows if r["label"]}))


def _row(video_id: str, path: str, label: str, split: Optional[str] = None, error: Optional[str] = None
         ) -> dict[str, Any]:
    """A manifest row, with the file's size and modification time (its identity, unless
    `dataset.identity=sha256`): a missing file is a failed row."""
    size, mtime_ns = _stat(path)
    if size is None and error is None:
        error = f"no such file: {path}"
    return {"video_id": video_id, "path": path, "label": label, "split": split, "error": error, "size": size,
            "mtime_ns": mtime_ns}


def _dedupe_ids(rows: list[dict[str, Any]], keep_extension: bool = True) -> None:
    """Make the ids unique without depending on which files sort first: files of one folder
    that share a name but not an extension (`x.mp4`, `x.avi`) each keep their extension in
    their id; a CSV's repeated rows, and any id still taken, get `#2`, `#3` ... (an id that no
    other row has, checked against them all)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["video_id"], []).append(r)
    if keep_extension:
        for same in groups.values():
            if len(same) > 1:
                for r in same:
                    r["video_id"] += os.path.splitext(r["path"])[1]
    taken: set[str] = set()
    wanted = {r["video_id"] for r in rows}
    for r in rows:
        vid, n = r["video_id"], 1
        while vid in taken or (n > 1 and vid in wanted):
            n += 1
            vid = f"{r['video_id']}#{n}"
        taken.add(vid)
        r["video_id"] = vid


def _stat(path: str) -> tuple[Optional[int], Optional[int]]:
    """(size in bytes, modification time in ns) of a file: part of its identity."""
    try:
        st = os.stat(path)
    except OSError:
        return None, None
    return st.st_size, st.st_mtime_ns


def _under(root: str, path: str) -> bool:
    root = os.path.realpath(root)
    return os.path.commonpath([root, os.path.realpath(path)]) == root


def _restrict(corpus: Corpus, dataset: dict[str, Any]) -> Corpus:
    rows, classes = corpus.rows, corpus.classes
    if dataset.get("classes"):
        wanted = list(dataset["classes"])
        unknown = [c for c in wanted if c not in set(classes)]
        if unknown:
            raise ParameterError("classes", wanted, f"unknown classes {unknown}; the corpus has {classes[:20]}"
                                                    f"{' ...' if len(classes) > 20 else ''}")
        rows = [r for r in rows if r["label"] in set(wanted)]
        classes = sorted(wanted)
    if dataset.get("splits"):
        rows = [r for r in rows if r["split"] in set(dataset["splits"])]
    cap = dataset.get("max_videos_per_class")
    if cap:
        counts: dict[str, int] = {}
        kept = []
        for r in rows:
            counts[r["label"]] = counts.get(r["label"], 0) + 1
            if counts[r["label"]] <= cap:
                kept.append(r)
        rows = kept
    return Corpus(rows=rows, classes=classes)
