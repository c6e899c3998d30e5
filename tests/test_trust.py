"""A run folder someone hands you is data: scoring with it runs no code it names unless told
to trust it, and nothing in its run.json is interpolated."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from tests.conftest import call_main, compose


def _handed_over(tmp_path, model: dict) -> str:
    run = tmp_path / "handed"
    run.mkdir(exist_ok=True)
    config = {"model": model, "clip": {}, "segment": {}, "activate": {}}
    (run / "run.json").write_text(json.dumps({"config": config}))
    pq.write_table(pa.table({"concept": ["c"]}), run / "concepts.parquet")
    return str(run)


def test_a_folder_whose_model_runs_code_is_refused_without_trust_run(tmp_path, monkeypatch):
    (tmp_path / "ace3d_planted.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\ndef build(): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for model, says in (({"name": "factory", "factory": "ace3d_planted:build"}, "imports and calls the factory"),
                        ({"name": "torchscript", "path": str(tmp_path / "m.pt")}, "TorchScript is code")):
        res = call_main(f"run_dir={_handed_over(tmp_path, model)}", f"run.output_dir={tmp_path / 'out'}",
                        module="pipeline.score")
        assert res.returncode == 2 and "trust_run=true" in res.stderr and says in res.stderr
    assert not (tmp_path / "ran").exists() and not (tmp_path / "out").exists()


def test_a_run_records_interpolations_stay_text(tmp_path, monkeypatch):
    from pipeline.score import pin_to_run, source_run

    monkeypatch.setenv("ACE3D_SECRET", "hunter2")
    _, c = source_run(_handed_over(tmp_path, {"name": "demo", "class_names": ["${oc.env:ACE3D_SECRET}"]}))
    cfg = pin_to_run(compose(), compose(), c, [])
    assert list(cfg.model.class_names) == ["${oc.env:ACE3D_SECRET}"]
