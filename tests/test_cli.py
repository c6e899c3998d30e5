"""`ace3d`, the one command: its commands, their help, its errors (in this process, no Ray)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from importlib import metadata

import pytest

from pipeline.commands import cli
from pipeline.config import Config


def ace3d(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_overview_lists_every_command_and_a_bare_call_is_an_error(capsys):
    code, out, _ = ace3d(capsys, "--help")
    assert code == 0 and out.startswith("usage: ace3d <command>")
    for name in ("run", "score", "report", "atlas", "plan", "compare", "train"):
        assert f"\n  {name} " in out
    code, out, err = ace3d(capsys)
    assert code == 2 and "usage: ace3d <command>" in err and not out
    code, _, err = ace3d(capsys, "explain")
    assert code == 2
    assert err == ("error: unknown command 'explain'; the commands: run, score, report, atlas, "
                   "plan, compare, train (ace3d --help)\n")
    code, out, _ = ace3d(capsys, "--version")
    assert code == 0 and out == f"ace3d {metadata.version('ace3d')}\n"


HELP_KEYS = {
    "run": ["concepts.k = ", "segment.n_segments = [15, 50, 80, 150, 300]", "model.name = demo"],
    "train": ["train.epochs = ", "train.patience = ", "model.name = demo"],
    "score": ["run_dir=<run folder>", "trust_run=false", "dataset.root = "],
    "report": ["run_dir = <run folder>", "report.exemplars = 3", "report.rank_by = auto"],
    "atlas": ["video_id=<id> supervoxel_id=<id>", "global_concept=<n>", "format=table|json"],
    "plan": ["sample=6", "segment.n_segments = [15, 50, 80, 150, 300]", "model.name = demo"],
    "compare": ["run_a=<run folder>", "run_b=<run folder>", "min_jaccard=0.1"],
}


@pytest.mark.parametrize("command", list(HELP_KEYS))
def test_each_command_says_what_it_does_and_its_keys(capsys, command):
    code, out, err = ace3d(capsys, command, "--help")
    assert code == 0 and not err
    assert out.startswith(f"usage: ace3d {command}")
    assert f"python -m {cli.COMMANDS[command].module} takes" in out
    assert cli.COMMANDS[command].about.splitlines()[0] in out
    for key in HELP_KEYS[command]:
        assert key in out, key
    assert "_schema" not in out  # the config store's typed nodes are not presets
    if command == "run":  # every section of the config, every preset group
        for field in dataclasses.fields(Config):
            assert f"\n  {field.name}." in out, field.name
        for group in ("dataset", "model", "ray", "segment"):
            assert f"\n  {group:<10} " in out


def test_a_sweep_is_refused_before_any_work(capsys, tmp_path):
    for flag in ("-m", "--multirun"):
        code, _, err = ace3d(capsys, "run", flag, "concepts.k=10,25",
                             f"run.output_dir={tmp_path / 'out'}")
        assert code == 2 and err.startswith("error: sweeps (-m/--multirun) are not supported")
    assert not os.listdir(tmp_path)


def test_the_python_m_forms_answer_help_as_the_command_does():
    """The real processes: `python -m pipeline --help` is `ace3d run --help` (not Hydra's help,
    which lists the typed schema nodes as presets), and the installed console script runs."""
    res = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.startswith("usage: ace3d run")
    assert "_schema" not in res.stdout
    script = os.path.join(os.path.dirname(sys.executable), "ace3d")
    res = subprocess.run([script, "report", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.startswith("usage: ace3d report")
