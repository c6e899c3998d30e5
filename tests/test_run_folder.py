"""The run folder's rules, without Ray: part names that never collide, the lease (one live
driver, a dead one's lease taken over, a lost lease stops the writer), and fingerprints that
hold only the settings that change outputs."""

from __future__ import annotations

import json
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
    record = {"run_id": "other-run", "host": socket.gethostname(), "pid": os.getpid(), "command": "python -m pipeline",
              "renewed": time.time(), "ttl_s": 60.0, "started": "2026-12-01T00:00:00+00:00", **fields}
    (root / LEASE).write_text(json.dumps(record))


def test_a_live_lease_refuses_a_second_driver_and_is_released(tmp_path):
    with Lease(str(tmp_path), "run-a"):
        with pytest.raises(LeaseError, match=r"in use by run 'run-a' \(pid %d" % os.getpid()):
            Lease(str(tmp_path), "run-b").acquire()
    assert not (tmp_path / LEASE).exists()
    with Lease(str(tmp_path), "run-b"):
        assert json.loads((tmp_path / LEASE).read_text())["run_id"] == "run-b"


def test_a_dead_drivers_lease_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _lease_file(tmp_path, pid=dead.pid)  # this host, its process gone: at once
    with Lease(str(tmp_path), "run-a"):
        pass
    _lease_file(tmp_path, host="elsewhere", renewed=time.time() - 120)  # another host, not renewed for 2 min
    with Lease(str(tmp_path), "run-b"):
        pass
    _lease_file(tmp_path, host="elsewhere")  # another host, renewed just now: live
    with pytest.raises(LeaseError, match="in use by run 'other-run'.*on elsewhere"):
        Lease(str(tmp_path), "run-c").acquire()


def test_a_driver_that_lost_its_lease_stops_before_its_next_write(tmp_path):
    folder = RunFolder(str(tmp_path), "run-a")
    with Lease(str(tmp_path), "run-a", ttl=0.4) as lease:
        folder.lease = lease
        _unit(folder, 1)
        _lease_file(tmp_path, run_id="run-b")  # taken over (this run looked dead)
        deadline = time.monotonic() + 10
        while lease.lost is None and time.monotonic() < deadline:
            time.sleep(0.05)
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
