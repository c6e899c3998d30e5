"""The corpus a run reads, without Ray: ids unique and stable whatever the file names, CSV
rows that cannot be trusted become failed rows, and any class name makes a safe partition
folder."""

from __future__ import annotations

import os

import pytest

from pipeline.data.corpus import resolve_corpus
from pipeline.run_folder import partition


def _folder(root, names: list[str]) -> dict[str, str]:
    for name in names:
        os.makedirs(os.path.dirname(root / name), exist_ok=True)
        (root / name).write_bytes(b"x")
    rows = resolve_corpus({"kind": "folder", "root": str(root)}).rows
    return {os.path.relpath(r["path"], root): r["video_id"] for r in rows}


def test_ids_are_unique_and_do_not_change_when_files_are_added(tmp_path):
    ids = _folder(tmp_path, ["walk/x.mp4", "walk/x.avi", "walk/x#2.mp4", "walk/y.mp4"])
    assert ids == {"walk/x.mp4": "walk/x.mp4", "walk/x.avi": "walk/x.avi", "walk/x#2.mp4": "walk/x#2",
                   "walk/y.mp4": "walk/y"}
    more = _folder(tmp_path, ["walk/a.mp4", "walk/x#3.mp4", "walk/y.mp4.mkv", "run/x.mp4"])
    assert {k: more[k] for k in ids} == ids  # the ids the files had stand
    assert len(set(more.values())) == len(more)
    assert more["walk/y.mp4.mkv"] == "walk/y.mp4" and more["run/x.mp4"] == "run/x"


def test_a_csv_row_outside_the_root_or_without_a_label_is_a_failed_row(tmp_path):
    root = tmp_path / "videos"
    (root / "walk").mkdir(parents=True)
    (root / "walk" / "a_000001_000002.mp4").write_bytes(b"x")
    (tmp_path / "secret_000001_000002.mp4").write_bytes(b"x")
    csv = tmp_path / "k.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\nwalk,a,1,2,train\nwalk,../../secret,1,2,train\n"
                   ",a,1,2,train\nwalk,a,1,2,train\n")
    rows = resolve_corpus({"kind": "csv", "root": str(root), "csv": str(csv),
                           "path_template": "{label}/{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"}).rows
    assert [r["error"] is None for r in rows] == [True, False, False, True]
    assert "outside dataset.root" in rows[1]["error"] and "empty label" in rows[2]["error"]
    assert rows[0]["size"] == 1 and rows[0]["mtime_ns"] > 0
    assert len({r["video_id"] for r in rows}) == 4  # the repeated row gets an id of its own


@pytest.mark.parametrize("name", ["é" * 86, "行" * 60, "a" * 300, "_unlabelled", ".hidden", "..", "a/b%c", "x$y"])
def test_any_class_name_makes_one_safe_partition_folder(name):
    folder = partition(layer="layer1", target_class=name)
    layer, cls = folder.split("/")
    assert layer == "layer1" and len(cls.encode()) <= 120 and cls not in (".", "..", "_unlabelled")
    assert not cls.startswith((".", "_")) and "/" not in cls
    assert partition(target_class=name + "!") != partition(target_class=name)
    assert partition(target_class=None) == "_unlabelled"


def test_classes_that_differ_only_in_case_are_refused_naming_both(tmp_path):
    from pipeline.params import ParameterError

    with pytest.raises(ParameterError, match=r"classes \['Run', 'run'\] differ only in case"):
        _folder(tmp_path, ["Run/a.mp4", "run/b.mp4"])


def test_a_degenerate_corpus_is_refused_before_any_work_naming_the_key(tmp_path, caplog):
    from pipeline.config import Config, ConfigError, DatasetConfig, RunConfig
    from pipeline.stages.ingest import check_corpus

    def c(stages=("ingest", "segment", "activate", "concepts"), **dataset):
        return Config(dataset=DatasetConfig(name="mine", kind="folder", root=str(tmp_path), **dataset),
                      run=RunConfig(stages=list(stages)))

    def rows(*labels):
        return [{"label": k, "error": None} for k in labels]

    with pytest.raises(ConfigError, match=r"'dataset.root' = '.*': holds no video that dataset.classes=\['x'\]"):
        check_corpus([], c(classes=["x"]))
    with pytest.raises(ConfigError, match=r"'dataset.classes'.*at least two classes.*\{'walk': 3\}"):
        check_corpus(rows("walk", "walk", "walk") + [{"label": "run", "error": "not a video"}], c())
    check_corpus(rows("walk"), c(stages=("ingest", "segment")))  # no concepts: one class will do
    check_corpus(rows("walk", "walk", "run"), c())
    assert "class 'run' has 1 video: concepts skip it" in caplog.text
    # the model's classes: two of the corpus's at least, for concepts
    demo = ["advance", "jitter", "retreat"]
    with pytest.raises(ConfigError, match=r"'model.class_names' = None: the model knows 1 of the "
                                          r"corpus's classes.*\(advance, jitter, retreat\): "
                                          r"surfing, walk\. Name"):
        check_corpus(rows("advance", "advance", "surfing", "walk"), c(), demo)
    few = rows("advance", "advance", "surfing", "walk")
    check_corpus(few, c(stages=("ingest", "segment")), demo)  # no concepts: not checked
    check_corpus(rows("advance", "jitter", "jitter", "surfing"), c(), demo)
    assert ("the model does not know 1 of the corpus's classes (surfing): their videos serve "
            "only in the random sets") in caplog.text
    check_corpus(rows("walk", "run"), c(), [])  # a model whose outputs alone name its classes
