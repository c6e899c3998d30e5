"""A user concept table as `concepts.user` takes it: read, checked and narrowed to a class
without Ray (the concepts stage's explanation of them runs on small_run: test_explanation)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from pipeline.concepts.user import (
    USER_RULE,
    UserConcept,
    UserConceptError,
    as_concept,
    digest,
    for_class,
    read,
)
from tests.conftest import call_main


def test_a_csv_and_a_parquet_table_read_alike_and_repeated_rows_count_once(tmp_path):
    rows = {
        "concept": ["water", "water", "water", "ball"],
        "video_id": ["001", "a/2", "001", "001"],
        "supervoxel_id": [7, 8, 7, 65537],
        "target_class": [None, None, None, "surfing"],
    }
    pq.write_table(pa.table(rows), tmp_path / "c.parquet")
    pacsv.write_csv(pa.table(rows), tmp_path / "c.csv")
    a, b = read(str(tmp_path / "c.parquet")), read(str(tmp_path / "c.csv"))
    assert a.equals(b) and digest(a) == digest(b)  # "001" stays text in the CSV
    assert a.num_rows == 3
    assert for_class(a, "surfing") == {"ball": [("001", 65537)], "water": [("001", 7), ("a/2", 8)]}
    assert for_class(a, "skiing") == {"water": [("001", 7), ("a/2", 8)]}
    no_class = pa.table({k: v for k, v in rows.items() if k != "target_class"})
    pq.write_table(no_class, tmp_path / "n.parquet")
    assert read(str(tmp_path / "n.parquet")).column("target_class").null_count == 4 - 1


@pytest.mark.parametrize(
    "rows, says",
    [
        ({"concept": ["a"], "video_id": ["v"]}, "no column 'supervoxel_id'"),
        (
            {"concept": ["a"], "video_id": ["v"], "supervoxel_id": [1], "colour": ["red"]},
            "unknown column 'colour'",
        ),
        ({"concept": ["a/b"], "video_id": ["v"], "supervoxel_id": [1]}, "concept name 'a/b'"),
        ({"concept": ["water ski"], "video_id": ["v"], "supervoxel_id": [1]},
         "concept name 'water ski': a name is letters, digits"),
        ({"concept": [None], "video_id": ["v"], "supervoxel_id": [1]}, "concept is empty in 1 row"),
        ({"concept": ["a"], "video_id": ["v"], "supervoxel_id": ["x"]}, "supervoxel_id an integer"),
    ],
)
def test_a_bad_table_is_refused_naming_what_is_wrong(tmp_path, rows, says):
    pq.write_table(pa.table(rows), tmp_path / "t.parquet")
    with pytest.raises(UserConceptError, match=says):
        read(str(tmp_path / "t.parquet"))


def test_the_job_refuses_a_bad_table_before_any_work(tmp_path):
    pq.write_table(pa.table({"concept": ["a"], "video_id": ["v"]}), tmp_path / "t.parquet")
    res = call_main(
        f"concepts.user={tmp_path / 't.parquet'}",
        f"run.output_dir={tmp_path / 'run'}",
        f"dataset.root={tmp_path / 'never'}",
    )
    assert (
        res.returncode == 2
        and "concepts.user" in res.stderr
        and "no column 'supervoxel_id'" in res.stderr
    )
    assert "Traceback" not in res.stderr and not (tmp_path / "never").exists()
    res = call_main(
        f"concepts.user={tmp_path / 'absent.csv'}",
        f"dataset.root={tmp_path / 'never'}",
        f"run.output_dir={tmp_path / 'run'}",
    )
    assert res.returncode == 2 and "cannot be read as a CSV table" in res.stderr


def test_a_user_concept_keeps_its_members_nearest_its_mean_as_discovery_does():
    x = np.array([[0, 0], [1, 0], [0, 1], [10, 10]], dtype=np.float32)
    c = as_concept(UserConcept("mine", x, ["a", "a", "b", "c"], [1, 2, 3, 4]), max_members=3)
    np.testing.assert_allclose(c.centroid, x.mean(0))
    assert (
        c.members.tolist() == [1, 2, 0] and c.rule == USER_RULE
    )  # the outlier is beyond max_members
    assert c.radius == pytest.approx(float(np.linalg.norm(x[0] - x.mean(0)))) and c.num_videos == 2


def test_the_pairs_fingerprint_follows_the_tables_rows_not_its_path_and_is_unchanged_without_one(
    tmp_path,
):
    """A rerun with the same rows skips the finished pairs wherever the file is, other rows redo
    them, and a run without user concepts keeps the fingerprint it had before they existed."""
    from types import SimpleNamespace

    from pipeline.fingerprints import reduction_fingerprint
    from pipeline.stages.concepts import pairs_fingerprint

    cfg = SimpleNamespace(dataset=SimpleNamespace(kind="synthetic", root="/data/synthetic"))
    concepts = {"k": 25, "seed": 0, "user": None}
    job = SimpleNamespace(c={"concepts": concepts}, fingerprints={"activate": "act"}, cfg=cfg)
    videos = [("advance/v0", "advance"), ("jitter/v0", "jitter")]
    before = reduction_fingerprint("act", {"concepts": {"k": 25, "seed": 0},
                                           "ground_truth": "/data/synthetic"}, videos)
    assert pairs_fingerprint(job, None, videos) == before
    rows = {"concept": ["a", "a"], "video_id": ["advance/v0", "jitter/v0"], "supervoxel_id": [1, 2]}
    for name in ("x.parquet", "y.parquet"):
        pq.write_table(pa.table(rows), tmp_path / name)
    x, y = read(str(tmp_path / "x.parquet")), read(str(tmp_path / "y.parquet"))
    assert pairs_fingerprint(job, x, videos) == pairs_fingerprint(job, y, videos) != before
    pq.write_table(pa.table({**rows, "supervoxel_id": [1, 3]}), tmp_path / "z.parquet")
    assert pairs_fingerprint(job, read(str(tmp_path / "z.parquet")), videos) != pairs_fingerprint(
        job, x, videos
    )
