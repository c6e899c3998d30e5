"""Concepts a user brings: named sets of the run's supervoxels ("the actor", "water", a global
concept of the atlas, a selection made in pandas), explained beside the discovered concepts.

A user concept table has one row per member: `concept` (its name), `video_id` and
`supervoxel_id` (a supervoxel of the run: supervoxels/), and optionally `target_class` (the
class whose explanation it joins; empty or absent: every class). At each explained layer a
concept's vectors are its members' supervoxel vectors (activations/); it then goes through
what a discovered concept goes through: CAVs against the same random sets, both TCAV scores
with the same test, causal importance and voxel maps where the scoring videos have supervoxels
within its radius. Its rows are named `<class>/<layer>/user:<name>` with the rule "user
concept".

Pure pyarrow and numpy: the concepts stage reads the table, the pair tasks call `as_concept`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schemas
from pipeline.concepts.discovery import Concept

USER_RULE = (
    "user concept"  # the `rule` of a user concept's rows: how to tell them from discovered ones
)
PREFIX = "user:"  # a user concept's name in the tables: <class>/<layer>/user:<name>
COLUMNS = {f.name: f.type for f in schemas.USER_CONCEPTS}
NAME = re.compile(r"[A-Za-z0-9_.-]+")  # as the report names its files: two names never share one


class UserConceptError(ValueError):
    """A user concept table that cannot be explained; the message says which row or column."""


@dataclass
class UserConcept:
    """One user concept at one layer: its members' vectors [n, C], video ids and supervoxel ids."""

    name: str
    vectors: np.ndarray
    video_ids: Sequence[str]
    ids: Sequence[int]


def is_user(concept: str) -> bool:
    """Whether a concept name (`<class>/<layer>/<name>`) is a user concept's."""
    return concept.rsplit("/", 1)[-1].startswith(PREFIX)


def checked(table: pa.Table, source: str) -> pa.Table:
    """The user concept table with its columns typed (target_class null where absent), sorted
    and without repeated rows; raises UserConceptError naming what is wrong."""
    missing = [c for c in ("concept", "video_id", "supervoxel_id") if c not in table.column_names]
    if missing:
        raise UserConceptError(
            f"{source}: no column {missing[0]!r} (a user concept table has concept, video_id, "
            f"supervoxel_id and optionally target_class; it has {table.column_names})"
        )
    extra = sorted(set(table.column_names) - set(COLUMNS))
    if extra:
        raise UserConceptError(f"{source}: unknown column {extra[0]!r} (known: {list(COLUMNS)})")
    if "target_class" not in table.column_names:
        table = table.append_column("target_class", pa.nulls(table.num_rows, pa.string()))
    try:
        table = table.select(list(COLUMNS)).cast(schemas.USER_CONCEPTS)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise UserConceptError(
            f"{source}: {e} (concept, video_id and target_class are text, supervoxel_id an integer)"
        ) from None
    cls = table.column("target_class")
    table = table.set_column(
        3, "target_class", pc.if_else(pc.equal(cls, ""), pa.scalar(None, pa.string()), cls)
    )
    for name in ("concept", "video_id", "supervoxel_id"):
        if table.column(name).null_count:
            raise UserConceptError(
                f"{source}: {name} is empty in {table.column(name).null_count} row(s)"
            )
    bad = [n for n in pc.unique(table.column("concept")).to_pylist() if not NAME.fullmatch(n)]
    if bad:
        raise UserConceptError(
            f"{source}: concept name {bad[0]!r}: a name is letters, digits, '_', '.' and '-'"
        )
    if table.num_rows == 0:
        raise UserConceptError(f"{source}: no rows")
    table = table.group_by(list(COLUMNS), use_threads=False).aggregate([])  # repeated rows once
    return table.select(list(COLUMNS)).sort_by(
        [(c, "ascending") for c in ("concept", "target_class", "video_id", "supervoxel_id")]
    )


def read(path: str) -> pa.Table:
    """A user concept table from a Parquet or CSV file (a path or a filesystem URI), checked."""
    from pyarrow import csv

    from pipeline import io

    try:
        if path.lower().endswith(".csv"):
            with io.open_input_file(path) as f:
                text = {c: pa.string() for c in ("concept", "video_id", "target_class")}
                table = csv.read_csv(f, convert_options=csv.ConvertOptions(column_types=text))
        else:
            table = io.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise UserConceptError(
            f"{path}: cannot be read as a {'CSV' if path.lower().endswith('.csv') else 'Parquet'} "
            f"table ({e})"
        ) from None
    return checked(table, path)


def digest(table: pa.Table) -> str:
    """A digest of a checked table's rows (what a concept is made of, not where the file was)."""
    h = hashlib.sha256()
    for name in COLUMNS:
        h.update(repr(table.column(name).to_pylist()).encode())
    return h.hexdigest()[:16]


def for_class(table: pa.Table, target_class: str) -> dict[str, list[tuple[str, int]]]:
    """The user concepts that join `target_class`'s explanation (its own and those of every
    class), each as its sorted (video_id, supervoxel_id) members."""
    mine = table.filter(
        pc.or_kleene(
            pc.is_null(table.column("target_class")),
            pc.equal(table.column("target_class"), target_class),
        )
    )
    out: dict[str, list[tuple[str, int]]] = {}
    for name, vid, sid in zip(
        *(mine.column(c).to_pylist() for c in ("concept", "video_id", "supervoxel_id"))
    ):
        out.setdefault(name, []).append((vid, int(sid)))
    return {n: sorted(set(m)) for n, m in out.items()}


def as_concept(user: UserConcept, max_members: int) -> Concept:
    """A user concept as discovery hands concepts on: its centre (the members' mean), the
    members nearest it first (at most `max_members`, as discovery keeps them), their distances,
    and its radius (the largest kept distance); `members` index `user.vectors`."""
    x = np.asarray(user.vectors, dtype=np.float32)
    centroid = x.mean(0)
    dist = np.linalg.norm(x - centroid, axis=1)
    order = np.argsort(dist, kind="stable")[:max_members]
    return Concept(
        members=order.astype(np.int64),
        distances=dist[order].astype(np.float32),
        centroid=centroid,
        radius=float(dist[order].max()),
        num_videos=len({user.video_ids[i] for i in order}),
        cluster=-1,
        rule=USER_RULE,
    )


def missing_members(
    members: Sequence[tuple[str, int]], found: Sequence[tuple[str, int]]
) -> Optional[str]:
    """A sentence naming the members not among `found` (None when all are)."""
    lost = sorted(set(members) - set(found))
    if not lost:
        return None
    shown = ", ".join(f"({v!r}, {s})" for v, s in lost[:3])
    return f"{len(lost)} of its {len(set(members))} (video_id, supervoxel_id) members are not in the run: {shown}"


def table_file(table: Any) -> str:
    """`explain(user_concepts=...)` as a file: a path as it is; a DataFrame or Table checked and
    written to the temporary folder under a name made of its digest (ValueError if it is bad)."""
    import os
    import tempfile

    if isinstance(table, (str, os.PathLike)):
        return os.fspath(table)
    try:
        t = (
            table
            if isinstance(table, pa.Table)
            else pa.Table.from_pandas(table, preserve_index=False)
        )
    except (TypeError, AttributeError, pa.ArrowException) as e:
        raise ValueError(
            f"user_concepts = {type(table).__name__}: a file, a pandas DataFrame or a pyarrow "
            f"Table ({e})"
        ) from None
    try:
        t = checked(t, "user_concepts")
    except UserConceptError as e:
        raise ValueError(str(e)) from None
    path = os.path.join(tempfile.gettempdir(), f"ace3d-user-concepts-{digest(t)}.parquet")
    if not os.path.exists(path):
        import pyarrow.parquet as pq

        pq.write_table(t, path + f".{os.getpid()}")  # whole or not at all
        os.replace(path + f".{os.getpid()}", path)
    return path
