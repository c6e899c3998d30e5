"""The run folder's rules, without Ray: part names that never collide, the lease (one live
driver, a dead one's lease taken over, a lost lease stops the writer), and fingerprints that
hold only the settings that change outputs."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pyarrow as pa
import pytest

from pipeline.lease import Lease, LeaseError
from pipeline.run_folder import LEASE, RunFolder, RunFolderError, fingerprints


def _unit(folder: RunFolder, n: int, fingerprint: str = "x") -> None:
    folder.write_unit("stage", f"{n:05d}", [("data", pa.table({"video_id": [f"v{n}"]}))], [{"video_id": f"v{n}"}],
                      fingerprint)


def test_two_writers_of_one_dataset_never_collide(tmp_path):
    a, b = RunFolder(str(tmp_path), "20260101T000000-aaaaaa"), RunFolder(str(tmp_path), "20260101T000000-bbbbbb")
    for folder, n in ((a, 1), (b, 2), (a, 3)):
        _unit(folder, n)
    files = sorted(os.listdir(tmp_path / "data"))
    assert len(files) == 3 and len(set(files)) == 3
    assert sorted(a.read("data").column("video_id").to_pylist()) == ["v1", "v2", "v3"]
    assert sorted(a.done_units("stage", ["data"], "x", "test").column("video_id").to_pylist()) == ["v1", "v2", "v3"]


def test_every_parquet_file_says_its_output_format_and_the_code_version_that_wrote_it(tmp_path):
    import glob
    from importlib import metadata

    import pyarrow.parquet as pq

    from pipeline import schemas

    folder = RunFolder(str(tmp_path), "run-a")
    _unit(folder, 1)
    own = pa.table({"x": [1]}).replace_schema_metadata({"concepts": "d"})
    folder.write_table("table.parquet", own)
    files = glob.glob(str(tmp_path / "**" / "*.parquet"), recursive=True)
    assert len(files) == 3  # the unit's part, its marker, the table
    for path in files:
        meta = pq.read_schema(path).metadata
        assert meta[b"ace3d.format"] == str(schemas.FORMAT_VERSION).encode()
        assert meta[b"ace3d.version"].decode() == metadata.version("ace3d")  # the distribution's: __version__
    assert pq.read_schema(tmp_path / "table.parquet").metadata[b"concepts"] == b"d"  # its own kept


def test_a_unit_without_its_marker_is_removed_and_other_settings_are_refused_or_discarded(tmp_path):
    folder = RunFolder(str(tmp_path), "run-a")
    _unit(folder, 1)
    (tmp_path / "data" / "part-run-a-00002.parquet").write_bytes(
        (tmp_path / "data" / "part-run-a-00001.parquet").read_bytes())  # a crash before its marker
    assert folder.done_units("stage", ["data"], "x", "test").column("video_id").to_pylist() == ["v1"]
    assert sorted(os.listdir(tmp_path / "data")) == ["part-run-a-00001.parquet"]
    with pytest.raises(RunFolderError, match="other test settings"):
        folder.done_units("stage", ["data"], "y", "test")
    assert folder.done_units("stage", ["data"], "y", "test", stale="discard").num_rows == 0
    assert os.listdir(tmp_path / "data") == [] and os.listdir(tmp_path / "_done" / "stage") == []


def test_a_worker_of_a_driver_that_lost_the_folder_writes_nothing(tmp_path):
    import pickle

    worker = pickle.loads(pickle.dumps(RunFolder(str(tmp_path), "run-a")))  # as a Ray task gets it
    _lease_file(tmp_path, run_id="run-a")
    _unit(worker, 1)
    _lease_file(tmp_path, run_id="run-b")  # another driver took the folder over
    with pytest.raises(RunFolderError, match="no longer holds"):
        _unit(worker, 2)
    assert RunFolder(str(tmp_path)).read("data").column("video_id").to_pylist() == ["v1"]


def _lease_file(root, **fields) -> None:
    from pipeline.lease import this_host

    record = {"run_id": "other-run", "host": socket.gethostname(), "host_key": this_host(), "pid": os.getpid(),
              "command": "python -m pipeline", "count": 0, "ttl_s": 60.0, "started": "2026-12-01T00:00:00+00:00",
              **fields}
    (root / LEASE).write_text(json.dumps(record))


def test_a_live_lease_refuses_a_second_driver_and_is_released(tmp_path):
    with Lease(str(tmp_path), "run-a"):
        with pytest.raises(LeaseError, match=r"in use by run 'run-a' \(pid %d" % os.getpid()):
            Lease(str(tmp_path), "run-b").acquire()
    assert not (tmp_path / LEASE).exists()
    with Lease(str(tmp_path), "run-b"):
        assert json.loads((tmp_path / LEASE).read_text())["run_id"] == "run-b"


def test_a_dead_drivers_lease_is_taken_over_and_a_live_one_on_another_host_is_not(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _lease_file(tmp_path, pid=dead.pid)  # this host, its process gone: at once
    with Lease(str(tmp_path), "run-a"):
        pass
    # Another host (or a container with this host name but its own PID namespace: a pid alive
    # here means nothing), not renewed while watched for its ttl: dead, whatever its clock says.
    _lease_file(tmp_path, host_key=f"{socket.gethostname()}/other-boot/1", ttl_s=0.5)
    with Lease(str(tmp_path), "run-b"):
        pass
    # Another host whose driver renews its lease: live, however far its clock is from ours.
    holder = Lease(str(tmp_path), "run-elsewhere", ttl=2.0)  # renewed every 0.5 s, watched for 2 s
    holder.host = "elsewhere/boot/1"
    holder._record = lambda: {**Lease._record(holder), "renewed": "2030-01-01T00:00:00+00:00"}  # a clock ahead
    with holder:
        with pytest.raises(LeaseError, match="in use by run 'run-elsewhere'"):
            Lease(str(tmp_path), "run-c").acquire()


def test_a_torn_lease_is_stale_and_named(tmp_path, caplog):
    (tmp_path / LEASE).write_text("")
    with Lease(str(tmp_path), "run-a"):
        assert json.loads((tmp_path / LEASE).read_text())["run_id"] == "run-a"
    assert "lease.json cannot be read" in caplog.text


def test_a_driver_whose_lease_file_was_removed_stops_and_never_takes_the_folder_back(tmp_path):
    folder = RunFolder(str(tmp_path), "run-a")
    with Lease(str(tmp_path), "run-a", ttl=0.4) as lease:
        folder.lease = lease
        _unit(folder, 1)
        (tmp_path / LEASE).unlink()  # another run took the folder over while this one slept, and finished
        deadline = time.monotonic() + 10
        while lease.lost is None and time.monotonic() < deadline:  # the next renewal sees it gone
            time.sleep(0.05)
        time.sleep(0.3)  # and later ones come and go
        assert not (tmp_path / LEASE).exists() and lease.lost
        with pytest.raises(LeaseError, match="was removed"):
            _unit(folder, 2)
        with pytest.raises(LeaseError, match="was removed"):  # deletes too
            folder.remove("data/part-run-a-00001.parquet")
    worker = RunFolder(str(tmp_path), "run-a")
    worker._worker = True
    with pytest.raises(RunFolderError, match="cannot see its lease"):
        _unit(worker, 3)


def test_a_driver_that_lost_its_lease_stops_before_its_next_write(tmp_path):
    folder = RunFolder(str(tmp_path), "run-a")
    with Lease(str(tmp_path), "run-a", ttl=0.4) as lease:
        folder.lease = lease
        _unit(folder, 1)
        _lease_file(tmp_path, run_id="run-b")  # taken over (this run looked dead): seen at the next write
        with pytest.raises(LeaseError, match="lost its lease.*'run-b'"):
            _unit(folder, 2)
    assert json.loads((tmp_path / LEASE).read_text())["run_id"] == "run-b"  # not released by the loser
    assert folder.read("data").column("video_id").to_pylist() == ["v1"]


def _config(*overrides: str) -> dict:
    from hydra import compose, initialize_config_dir

    from pipeline.config import CONF_DIR, register_configs, to_plain

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return to_plain(compose("config", overrides=list(overrides)))


def test_a_reductions_video_digest_cannot_be_faked_by_an_id_holding_a_tab_or_newline():
    from pipeline.run_folder import reduction_fingerprint

    assert reduction_fingerprint("u", {}, [("a\tb", None)]) != reduction_fingerprint("u", {}, [("a", "b")])
    joined = reduction_fingerprint("u", {}, [("a\tb\nc", "d")])
    assert joined != reduction_fingerprint("u", {}, [("a", "b"), ("c", "d")])


def test_fingerprints_hold_only_the_settings_that_change_outputs():
    base = fingerprints(_config(), window=16)
    scheduling = fingerprints(_config("segment.videos_per_part=3", "activate.videos_per_part=5",
                                      "activate.num_actors=4", "activate.cpus_per_actor=2", "activate.torch_threads=1",
                                      "ray.num_cpus=8", "report.exemplars=1", "run.log_level=DEBUG"), window=16)
    assert scheduling == base
    for override, changed in (("clip.num_frames=32", {"ingest", "segment", "activate"}),
                              ("segment.compactness=10", {"segment", "activate"}),
                              ("segment.short_supervoxels=drop", {"segment", "activate"}),
                              ("activate.fill=100", {"activate"}), ("activate.batch_size=8", {"activate"}),
                              ("model.layers=[layer3]", {"activate"})):
        other = fingerprints(_config(override), window=16)
        assert {s for s in base if base[s] != other[s]} == changed, override


def _video_unit(folder: RunFolder, unit: str, videos: dict[str, str], failed: dict[str, bool] = {}) -> None:
    """A video stage's unit: a part row per ok video, a marker row per video with its identity
    (`failed`: video -> whether its failure is retryable)."""
    ok = [v for v in videos if v not in failed]
    markers = [{"video_id": v, "identity": videos[v]} for v in ok]
    markers += [{"video_id": v, "identity": videos[v], "status": "failed", "error": "x", "retryable": r}
                for v, r in failed.items()]
    folder.write_unit("stage", unit, [("data", pa.table({"video_id": ok}))] if ok else [], markers, "x")


def test_a_rerun_redoes_the_units_of_changed_or_removed_videos_and_retries_only_what_may_pass(tmp_path, caplog):
    folder = RunFolder(str(tmp_path), "run-a")
    _video_unit(folder, "u1", {"a": "i1", "b": "i1"})
    _video_unit(folder, "u2", {"c": "i1", "d": "i1"}, failed={"d": True})
    _video_unit(folder, "u3", {"e": "i1", "f": "i1"}, failed={"f": False})
    _video_unit(folder, "u4", {"g": "i1"})
    now = {"a": "i2", "b": "i1", "c": "i1", "d": "i1", "e": "i1", "f": "i1"}  # a changed, g left the corpus
    with caplog.at_level(logging.INFO, logger="pipeline"):
        done = folder.done_units("stage", ["data"], "x", "test", videos=now)
    assert sorted(done.column("video_id").to_pylist()) == ["c", "e", "f"]  # d retried, f's failure is permanent
    assert folder.redone["stage"] == {"videos_retried": 1}
    assert sorted(folder.read("data").column("video_id").to_pylist()) == ["c", "e"]  # u1's and u4's parts gone
    assert "2 unit(s) to redo" in caplog.text
    again = folder.done_units("stage", ["data"], "x", "test", videos=now, retry_failed=True)
    assert sorted(again.column("video_id").to_pylist()) == ["c", "e"]  # run.retry_failed=true: f too


def test_a_torn_marker_or_a_truncated_part_makes_its_unit_redo_naming_the_file(tmp_path, caplog):
    folder = RunFolder(str(tmp_path), "run-a")
    for n in (1, 2, 3):
        _unit(folder, n)
    (tmp_path / "_done" / "stage" / "part-run-a-00001.parquet").write_bytes(b"")  # 0 bytes, as a power loss leaves it
    part = tmp_path / "data" / "part-run-a-00002.parquet"
    part.write_bytes(part.read_bytes()[:-20])  # truncated
    (tmp_path / "data" / "part-run-a-00009.parquet.part").write_bytes(b"half")  # a write cut short
    done = folder.done_units("stage", ["data"], "x", "test")
    assert done.column("video_id").to_pylist() == ["v3"]
    assert "_done/stage/part-run-a-00001.parquet cannot be read" in caplog.text
    assert "data/part-run-a-00002.parquet cannot be read" in caplog.text
    assert sorted(os.listdir(tmp_path / "data")) == ["part-run-a-00003.parquet"]
    assert folder.read("data").column("video_id").to_pylist() == ["v3"]


def test_a_stages_failures_are_set_each_run_and_those_tried_again_heal(tmp_path):
    from pipeline import schemas

    folder = RunFolder(str(tmp_path), "run-a")
    rows = [{"video_id": v, "path": f"/{v}.mp4", "status": "ok"} for v in ("a", "b", "c")]
    rows[2].update(status="failed", error="not a video", failed_stage="ingest")
    folder.write_videos(pa.Table.from_pylist(rows, schema=schemas.VIDEOS), "f")
    t = folder.record_failures({"a": ("segmentation failed: OSError", True), "c": ("other", True)}, "segment")
    assert t.column("status").to_pylist() == ["failed", "ok", "failed"]
    assert t.column("retryable").to_pylist() == [True, None, None]
    assert t.column("error").to_pylist()[2] == "not a video"  # an earlier stage's failure stands
    t = folder.record_failures({}, "segment")  # a tried again and passed
    assert t.column("status").to_pylist() == ["ok", "ok", "failed"] and t.column("failed_stage")[0].as_py() is None


def test_a_field_added_to_a_parameter_set_is_in_its_fingerprint_unless_marked_scheduling(monkeypatch):
    import dataclasses

    import pipeline.config
    from pipeline.params import SCHEDULING

    @dataclasses.dataclass
    class Segment(pipeline.config.SegmentConfig):
        new_knob: float = 1.0
        new_schedule: int = dataclasses.field(default=1, metadata=SCHEDULING)

    c = _config()
    monkeypatch.setattr(pipeline.config, "SegmentConfig", Segment)
    base = fingerprints({**c, "segment": {**c["segment"], "new_knob": 1.0, "new_schedule": 1}}, window=16)
    knob = fingerprints({**c, "segment": {**c["segment"], "new_knob": 2.0, "new_schedule": 1}}, window=16)
    schedule = fingerprints({**c, "segment": {**c["segment"], "new_knob": 1.0, "new_schedule": 7}}, window=16)
    assert {s for s in base if base[s] != knob[s]} == {"segment", "activate"} and schedule == base


def test_the_concepts_are_read_with_what_later_stages_measured_of_those_concepts_only(tmp_path, caplog):
    """One writer per table: concepts.parquet (concepts), concept_importance.parquet and
    metrics/evaluate.parquet (evaluate), atlas/concept_links/ (atlas). The view joins them on the
    concept; what evaluate measured and the atlas linked from other concepts (the concepts stage
    ran again after them) is left out, saying why."""
    from pipeline import io, schemas
    from pipeline.run_folder import ATLAS_LINKS, ATLAS_MANIFEST, CONCEPT_IMPORTANCE, CONCEPTS, EVALUATE_METRICS

    folder = RunFolder(str(tmp_path))
    rows = [{"target_class": "a", "layer": "L", "concept": f"a/L/concept{i}", "rank": i, "tcav_mean": 0.9 - i / 10}
            for i in (1, 2)]
    concepts = pa.Table.from_pylist(rows, schema=schemas.CONCEPTS)
    folder.write_table(CONCEPTS, concepts)
    view = folder.concept_view()
    assert view.schema.names == schemas.CONCEPT_VIEW.names and view.column("causal_importance").null_count == 2
    importance = pa.Table.from_pylist([{**r, "causal_importance": 0.1 * r["rank"]} for r in rows],
                                      schema=schemas.CONCEPT_IMPORTANCE)
    folder.write_table(CONCEPT_IMPORTANCE, importance.replace_schema_metadata(
        {"concepts": schemas.concepts_digest(concepts)}))
    links = [{"target_class": "a", "layer": "L", "concept": "a/L/concept1", "global_concept": g, "members": m,
              "share": m / 4} for g, m in ((3, 1), (7, 3))]
    folder.write_table(f"{ATLAS_LINKS}/layer=L/part-x.parquet", pa.Table.from_pylist(links, schema=schemas.ATLAS_LINKS))
    assert folder.concept_view(["global_concept"]).column(0).null_count == 2  # no atlas.json yet
    digest = {"concepts": schemas.concepts_digest(concepts)}
    io.write_json(digest, folder.path(ATLAS_MANIFEST))
    figures = schemas.metric_rows("a", "L", {"crossfit_gap": 0.25})
    schema = schemas.METRICS.with_metadata(digest)
    folder.write_table(EVALUATE_METRICS, pa.Table.from_pylist(figures, schema=schema))
    assert folder.metrics(EVALUATE_METRICS) == {"a": {"L": {"crossfit_gap": 0.25}}}
    view = folder.concept_view(["concept", "causal_importance", "global_concept", "global_concept_share"]).to_pylist()
    assert view == [{"concept": "a/L/concept1", "causal_importance": 0.1, "global_concept": 7,
                     "global_concept_share": 0.75},
                    {"concept": "a/L/concept2", "causal_importance": 0.2, "global_concept": None,
                     "global_concept_share": None}]
    rows[0]["tcav_mean"] = 0.5  # the concepts stage again, other scores: evaluate's measurement is of the old ones
    folder.write_table(CONCEPTS, pa.Table.from_pylist(rows, schema=schemas.CONCEPTS))
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        stale = folder.concept_view(["causal_importance", "global_concept"])
        assert stale.column(0).null_count == stale.column(1).null_count == 2
        assert folder.metrics(EVALUATE_METRICS) == {}
    for name in (CONCEPT_IMPORTANCE, EVALUATE_METRICS, ATLAS_LINKS):
        assert f"{name} was made from other concepts" in caplog.text
