"""A whole job over a corpus whose names are hostile: a class of 86 accented letters (past the
file-name limit once percent-encoded), one of `$`, quotes and markup, files that share a name
but not an extension, a name with a terminal escape. Every file ends as a row, the ids are
unique, every partition folder fits the file system, and the report opens in a real browser
with every name shown as written, none run."""

from __future__ import annotations

import html
import logging
import os
import shutil

import pyarrow.parquet as pq

from tests.test_report import check_in_browser, page_sources

LONG = "é" * 86
MARKUP = "$a$ \"q\" 'q' <script>alert(1)"  # a folder name: no "/"


def test_a_whole_job_over_hostile_names_accounts_for_every_file_and_reports_them_as_written(tmp_path, local_ray,
                                                                                            caplog):
    from pipeline import explain
    from pipeline.data.synthetic import SyntheticParams, ensure_corpus

    ensure_corpus(str(tmp_path / "synthetic"), SyntheticParams(videos_per_class=3, seed=11))
    corpus = tmp_path / "corpus"
    names = {"advance": (LONG, ["v0.mp4", "v1.mp4", "v2.mp4"]),  # the demo model's classes, renamed
             "jitter": (MARKUP, ["a.mp4", "b.mp4", "c\x1b[31mred.mp4"]),
             "retreat": ("walk", ["x.mp4", "x.avi", "x#2.mp4"])}
    for source, (label, files) in names.items():
        (corpus / label).mkdir(parents=True)
        for j, name in enumerate(files):
            shutil.copy(tmp_path / "synthetic" / source / f"v{j:04d}.mp4", corpus / label / name)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        run = explain(videos=str(corpus), model="demo", output_dir=str(tmp_path / "run"),
                      model_options={"class_names": [LONG, MARKUP, "walk"]}, segment="reference",
                      concepts={"num_random_exp": 3}, evaluate={"random_draws": 1, "max_k": 3})
    videos = pq.read_table(tmp_path / "run" / "videos.parquet").to_pylist()
    assert len(videos) == 9 and all(v["status"] == "ok" for v in videos)  # every file a row, every one ok
    ids = [v["video_id"] for v in videos]
    assert len(set(ids)) == 9 and {"walk/x.mp4", "walk/x.avi", "walk/x#2"} <= set(ids)
    for dataset in ("activations", "voxel_importance", "concept_members"):
        for dirpath, dirnames, _ in os.walk(tmp_path / "run" / dataset):
            assert all(len(d.encode()) <= 120 for d in dirnames), dirnames
    assert "\x1b" not in caplog.text  # a name's escape sequence never reaches a terminal
    index = run.report_path
    text = open(index, encoding="utf-8").read()
    assert "<script>" not in text and "&lt;script&gt;alert(1)" in text
    for k in (LONG, MARKUP, "walk"):  # each class's section, its name as written
        assert f">{html.escape(k)}</h2>" in text
    for src in page_sources(index).sources:
        assert os.path.isfile(os.path.join(os.path.dirname(index), src)), src
    check_in_browser(index)
