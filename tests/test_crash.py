"""A load killed with SIGKILL at any moment leaves no half image visible; writers are serialised."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from helpers import REPO, STRATA, docker_v12_save, strata, tar_bytes


def _archive(tmp_path, name: str, tags: list[str], files: int = 3, size: int = 1000) -> str:
    layers = [
        tar_bytes([{"name": f"{name}/{i}/{j}", "data": os.urandom(size)} for j in range(files)]) for i in range(3)
    ]
    path = tmp_path / f"{name}.tar"
    path.write_bytes(docker_v12_save(layers, tags))
    return str(path)


def _visible(root: str) -> list[str]:
    return strata(root, "images", "-a", "-q").out.split()


@pytest.mark.parametrize("point", ["layer-published", "configs-published", "record-published"])
def test_kill_while_publishing_leaves_no_half_image(root, tmp_path, point):
    path = _archive(tmp_path, "crash", ["crash:1"])
    proc = subprocess.run(
        [*STRATA, "--root", root, "load", "-i", path],
        cwd=REPO,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": REPO, "STRATA_FAILPOINT": point},
    )
    assert proc.returncode == -signal.SIGKILL
    visible = _visible(root)
    for short in visible:  # whatever is visible is whole
        doc = json.loads(strata(root, "inspect", short).out)[0]
        for d in [
            doc["GraphDriver"]["Data"]["UpperDir"],
            *filter(None, doc["GraphDriver"]["Data"]["LowerDir"].split(":")),
        ]:
            assert os.path.isdir(d)
    assert strata(root, "images").out.count("crash") == 0  # the tag is the last step: not there
    assert strata(root, "system", "check").code == 0
    # the next writer sweeps the dead one's staging and completes the load
    assert strata(root, "load", "-i", path).out.strip() == "Loaded image: crash:1"
    assert os.listdir(os.path.join(root, "tmp")) == []
    assert strata(root, "system", "check").out.strip() == "store is consistent"


def test_kill_while_extracting_changes_nothing_visible(root, tmp_path, busybox_rootfs):
    strata(root, "import", busybox_rootfs, "base:1")
    before = _visible(root)
    path = _archive(tmp_path, "big", ["big:1"], files=400, size=20000)
    # in this process, not a zygote's fork: the SIGKILL below must hit the process doing the load
    proc = subprocess.Popen(
        [*STRATA, "--root", root, "load", "-i", path],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO, "STRATA_NO_ZYGOTE": "1"},
        stdout=subprocess.DEVNULL,
    )
    tmp = os.path.join(root, "tmp")
    deadline = time.monotonic() + 60
    staged = 0
    while time.monotonic() < deadline and proc.poll() is None:  # wait until extraction is under way
        txns = os.listdir(tmp)
        layer_dirs = (
            [os.path.join(tmp, t, d) for t in txns for d in os.listdir(os.path.join(tmp, t)) if d.endswith("-layer")]
            if txns
            else []
        )
        staged = sum(len(files) for ld in layer_dirs for _d, _s, files in os.walk(ld))
        if staged > 50:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert staged > 50, "the load finished before it could be killed mid-extraction"
    assert _visible(root) == before
    assert strata(root, "system", "check").code == 0
    assert strata(root, "load", "-i", path).out.strip() == "Loaded image: big:1"


def test_concurrent_loads_are_serialised(root, tmp_path):
    paths = [_archive(tmp_path, f"c{i}", [f"c{i}:1"]) for i in range(4)]
    procs = [
        subprocess.Popen(
            [*STRATA, "--root", root, "load", "-i", p],
            cwd=REPO,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": REPO},
        )
        for p in paths
    ]
    outs = [p.communicate(timeout=120)[0].decode().strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(outs) == [f"Loaded image: c{i}:1" for i in range(4)]
    assert json.loads(strata(root, "info", "--format", "json").out)["Tags"] == 4
    assert strata(root, "system", "check").code == 0
