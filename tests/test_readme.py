"""The README's tour, run top to bottom on a fresh store exactly as a newcomer would type it after
`make demo`: every command must succeed, and each ``# -> TEXT`` comment must be in what its command
printed. The README can then never drift from what works."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from helpers import REPO

README = os.path.join(REPO, "README.md")


def _section(title: str) -> str:
    with open(README) as f:
        text = f.read()
    m = re.search(rf"^## {re.escape(title)}\b.*?(?=^## |\Z)", text, re.M | re.S)
    assert m, f"README has no '## {title}' section"
    return m[0]


def _commands(section: str) -> list[str]:
    lines = []
    for block in re.findall(r"^```sh\n(.*?)^```", section, re.M | re.S):
        lines += [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return lines


def test_setup_is_exactly_make_demo_and_make_test():
    assert [line.split("#")[0].strip() for line in _commands(_section("Set-up"))] == ["make demo", "make test"]


@pytest.mark.skipif(os.geteuid() != 0, reason="the suite's containers run as root (rootless: tests/test_rootless.py)")
def test_readme_tour_runs_on_a_fresh_store(tmp_path):
    commands = _commands(_section("Tour"))
    assert commands[1].startswith("examples/busybox-rootfs.sh | strata import -")  # it starts from nothing
    here = tmp_path / "checkout"  # "this directory", without writing into the real one
    here.mkdir()
    for name in ("examples", ".venv"):
        os.symlink(os.path.join(REPO, name), here / name)
    store = str(tmp_path / "store")
    venv_bin = os.path.dirname(sys.executable)
    path = os.pathsep.join(
        p for p in os.environ["PATH"].split(os.pathsep) if os.path.realpath(p) != os.path.realpath(venv_bin)
    )  # strata comes from the README's own PATH line
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "STRATA_NO_ZYGOTE")}
    env.update(PATH=path, STRATA_ROOT=store)
    script = ["set -euo pipefail"]
    for i, command in enumerate(commands):
        script += [f"printf '\\n@@step {i}\\n'", command]
    try:
        proc = subprocess.run(
            ["bash", "-c", "\n".join(script)], cwd=here, env=env, capture_output=True, text=True, timeout=300
        )
        steps = dict(re.findall(r"^@@step (\d+)\n(.*?)(?=^@@step |\Z)", proc.stdout, re.M | re.S))
        done = len(steps)  # the commands started; the last one started is the one that failed
        assert proc.returncode == 0, (
            f"README tour stopped at `{commands[done - 1]}` ({proc.returncode}):\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
        assert done == len(commands)
        for i, command in enumerate(commands):
            if "# -> " in command:
                expected = command.rsplit("# -> ", 1)[1].strip()
                assert expected in steps[str(i)], f"`{command}` printed:\n{steps[str(i)]}"
        assert sorted(os.listdir(here)) == [".venv", "examples"]  # the tour tidies up after itself
    finally:
        ids = subprocess.run(
            [os.path.join(venv_bin, "strata"), "--root", store, "ps", "-aq"], capture_output=True, text=True, env=env
        ).stdout.split()
        if ids:
            subprocess.run(
                [os.path.join(venv_bin, "strata"), "--root", store, "rm", "-f", *ids], capture_output=True, env=env
            )
