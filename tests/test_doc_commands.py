"""Every command the README and docs/ show is checked against the code, so the docs cannot drift
from it: its keys compose and validate (`ace3d run | plan | score | train`, `python -m pipeline...`,
`make demo ARGS=...`), its report settings and atlas query parse, its make target, bench script
and flags, job script exist. The cluster's own commands (`ray ...`, `jobs/...`) need a cluster:
their scripts exist and parse (`bash -n`). A command of another kind fails here until it is
taught or marked `# needs a cluster` in its block.

Placeholder paths (`/abs/...`, `<videos>`) become files of the test's own: a folder for
`dataset.root`, an empty file for `dataset.csv`, the demo checkpoint for `model.path`.
Commands that do the work are run elsewhere: the README's Python block by tests/test_api.py,
`make test` by CI, the CLI forms by tests/test_cli.py.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
CLUSTER = "# needs a cluster"
START = r"(?:\.venv/bin/|ace3d |python -m |make |ray |jobs/|bench/)"


def doc_commands() -> list[tuple[str, str]]:
    """(file, command) for every line of a shell block and every inline command with arguments."""
    found = []
    for path in DOCS:
        text = open(path, encoding="utf-8").read()
        name = os.path.relpath(path, ROOT)
        for block in re.findall(r"```(?:sh|bash|shell)\n(.*?)```", text, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                if line.strip() and not line.strip().startswith("#"):
                    found.append((name, line.strip()))
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for span in re.findall(r"`([^`\n]+)`", prose):
            synopsis = re.search(r"\[|\s\|\s|\.\.\.|<command>", span)  # a form, not a command
            has_args = (re.search(r"=| --\w", span)
                        or re.match(r"(make |\.venv/bin/|bench/\w|jobs/)", span))
            if re.match(START, span) and not synopsis and has_args:
                found.append((name, span))
    return found


COMMANDS = doc_commands()


def words(command: str) -> list[str]:
    """The command's words without its comment; a `.venv/bin/` prefix and `python` dropped."""
    line = command.split(" # ", 1)[0].split("  #", 1)[0]
    argv = shlex.split(line)
    argv[0] = argv[0].removeprefix(".venv/bin/")
    if argv[0] == "python" and argv[1:2] != ["-m"]:
        argv = argv[1:]
    return argv


def materialised(args: list[str], tmp: str) -> list[str]:
    """The overrides with placeholder paths made real."""
    from pipeline.models.registry import DEMO_CHECKPOINT

    out = []
    for arg in args:
        key, _, value = arg.partition("=")
        if value.startswith("/abs/") or re.fullmatch(r"<\w+>", value):
            value = os.path.join(tmp, re.sub(r"\W+", "_", value.strip("/<>")))
            if key == "dataset.root":
                os.makedirs(value, exist_ok=True)
            elif key == "dataset.csv":
                os.makedirs(os.path.dirname(value), exist_ok=True)
                open(value, "w").close()
            elif key == "model.path":
                shutil.copy(DEMO_CHECKPOINT, value)
        out.append(f"{key}={value}")
    return out


def check_overrides(config: str, args: list[str]) -> None:
    """The overrides compose on conf/ and pass every check a run makes before any work."""
    from pipeline.commands.cli import composed
    from pipeline.config import validate

    validate(composed(config, args))


def check_command(argv: list[str], tmp: str) -> None:
    head, rest = argv[0], argv[1:]
    modules = {"pipeline": "run", "pipeline.score": "score", "pipeline.report": "report",
               "pipeline.atlas": "atlas", "pipeline.train": "train", "pipeline.compare": "compare",
               "pipeline.commands.plan": "plan"}
    if head == "python" and argv[2] not in modules:  # python -m <a module of the project>
        import importlib.util

        assert importlib.util.find_spec(argv[2]) is not None, f"no module {argv[2]}"
        return
    if head == "python":  # python -m <a command's module>
        head, rest = "ace3d", [modules[argv[2]], *argv[3:]]
    if head == "ace3d":
        command, args = rest[0], rest[1:]
        if command in ("run", "plan", "score"):
            keys = [a for a in args if a.split("=")[0] not in ("run_dir", "sample", "output")]
            check_overrides("config", materialised(keys, tmp))
        elif command == "train":
            check_overrides("train", materialised(args, tmp))
        elif command == "report":
            from omegaconf import OmegaConf

            from pipeline.commands.report import report_settings

            dotlist = OmegaConf.from_dotlist([a for a in args if not a.startswith("run_dir=")])
            assert set(dotlist) <= {"report"}, f"report takes run_dir and report.* keys: {args}"
            report_settings(dotlist.get("report") or {})
        elif command == "compare":
            from pipeline.compare import parse as parse_compare

            parse_compare(args)
        elif command == "atlas":
            from pipeline.commands.atlas import parse

            parse(args)
        else:
            raise AssertionError(f"unknown ace3d command {command!r}")
    elif head == "make":
        targets = re.findall(r"^([\w-]+):", open(os.path.join(ROOT, "Makefile")).read(), re.M)
        assert rest[0] in targets, f"no make target {rest[0]!r}"
        for arg in rest[1:]:
            if arg.startswith("ARGS="):
                check_overrides("config", materialised(shlex.split(arg[5:]), tmp))
    elif head.startswith("bench/"):
        source = open(os.path.join(ROOT, head)).read()
        for flag in (a for a in rest if a.startswith("--")):
            assert f'"{flag}"' in source, f"{head} has no option {flag}"
    elif head in ("ray", "jobs/submit.sh", "jobs/kinetics400.sh"):
        script = os.path.join(ROOT, head) if head.startswith("jobs/") else None
        if script:
            assert subprocess.run(["bash", "-n", script]).returncode == 0
    else:
        raise AssertionError("a command no test checks: teach tests/test_doc_commands.py, or mark "
                             f"it {CLUSTER!r}")


def test_the_docs_show_commands_of_every_kind():
    kinds = {words(c)[0] if not c.endswith(CLUSTER) else "cluster" for _, c in COMMANDS}
    assert {"ace3d", "make", "python"} <= kinds and any(k.startswith("bench/") for k in kinds)


@pytest.mark.parametrize("where, command", COMMANDS, ids=[f"{f}:{c[:60]}" for f, c in COMMANDS])
def test_a_command_the_docs_show_matches_the_code(where, command, tmp_path):
    if command.endswith(CLUSTER):
        return
    check_command(words(command), str(tmp_path))
