"""The seed's walkthrough, as `make demo` runs it, end to end: commit, save, load, push, pull, run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import REPO


@pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")
def test_walkthrough_script_passes():
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", "PYTHONPATH": REPO}
    proc = subprocess.run(
        ["bash", os.path.join(REPO, "examples", "walkthrough.sh")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "walkthrough: all steps passed" in out
    assert "A /tmp/cool-file" in out and "Loaded image: fridge:latest" in out and "cool content" in out
    assert "1: digest: sha256:" in out and "Status: Downloaded image for 127.0.0.1:" in out
