"""The concepts stage's user concepts (`concepts.user`, `pipeline.concepts.user`): the table
checked against the run and kept in its folder, and each (class, layer)'s user concepts with
their members' vectors from activations/."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schemas
from pipeline.concepts.user import UserConcept, UserConceptError, for_class, missing_members, read
from pipeline.run_folder import ACTIVATIONS, USER_CONCEPTS, RunFolder, RunFolderError, partition

MIN_MEMBERS = 2  # a CAV's hold-out split keeps one member of each side


def user_concepts(
    folder: RunFolder, path: Optional[str], activated: np.ndarray, classes: list[str]
) -> Optional[pa.Table]:
    """The concepts stage's: `concepts.user`'s table, checked against the run (every member's
    video activated, at least 2 members in each explained class a concept joins: a CAV's hold-out
    split keeps one of each side) and kept in the run folder (user_concepts.parquet): what the
    run explained, whatever becomes of the file. None without one."""
    if not path:
        if folder.exists(USER_CONCEPTS):
            folder.remove(USER_CONCEPTS)
        return None
    try:
        table = read(path)
    except UserConceptError as e:
        raise RunFolderError(f"concepts.user: {e}") from None
    known = set(activated.tolist())
    absent = sorted(set(table.column("video_id").to_pylist()) - known)
    if absent:
        raise RunFolderError(
            f"concepts.user: {path}: {len(absent)} video(s) are not activated videos of the run "
            f"(failed, or not in it): {absent[:3]}"
        )
    named = set(table.column("target_class").drop_null().to_pylist())
    if named - set(classes):
        raise RunFolderError(
            f"concepts.user: {path}: target_class {sorted(named - set(classes))[0]!r} is not "
            f"a class the run explains ({classes})"
        )
    for k in classes:
        for name, members in for_class(table, k).items():
            if len(members) < MIN_MEMBERS:
                raise RunFolderError(
                    f"concepts.user: {path}: concept {name!r} has {len(members)} member for "
                    f"class {k!r}; a concept needs at least {MIN_MEMBERS} (its CAVs are fitted "
                    "and tested on them)"
                )
    folder.write_table(USER_CONCEPTS, table)
    return table


def user_supervoxels(
    folder: RunFolder,
    layer: str,
    wanted: dict[str, list[tuple[str, int]]],
    labels: dict[str, Optional[str]],
) -> list[UserConcept]:
    """The concepts stage's: the user concepts of a (class, layer) with their members' vectors at
    the layer, read from the class partitions of activations/<layer>/ that hold their videos
    (`labels`: each member video's label)."""
    if not wanted:
        return []
    videos = sorted({v for members in wanted.values() for v, _ in members})
    parts = sorted({labels[v] for v in videos}, key=str)
    t = pa.concat_tables([folder.read(
        f"{ACTIVATIONS}/{partition(layer=layer, target_class=p)}",
        columns=["video_id", "supervoxel_id", "vector"],
        filter=pc.field("video_id").isin(videos),
    ) for p in parts])
    row = {
        key: i
        for i, key in enumerate(
            zip(t.column("video_id").to_pylist(), t.column("supervoxel_id").to_pylist())
        )
    }
    x = schemas.vector_matrix(t)
    out = []
    for name, members in wanted.items():
        lost = missing_members(members, [m for m in members if m in row])
        if lost:
            raise RunFolderError(
                f"concepts.user: concept {name!r}: {lost} (a member is a supervoxel of the run "
                "that was kept: status 'kept' in supervoxels/)"
            )
        out.append(
            UserConcept(
                name, x[[row[m] for m in members]], [v for v, _ in members], [s for _, s in members]
            )
        )
    return out
