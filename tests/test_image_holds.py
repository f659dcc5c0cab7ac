"""``run`` racing ``rmi``: a run looks its image up and records its use holding ``gc.lock`` shared;
rmi holds it exclusively while it asks who uses the image and removes what nothing holds. And what a
writer killed mid-way leaves, ``system check`` reports."""

from __future__ import annotations

import fcntl
import os
import subprocess
import threading

import pytest
from helpers import REPO, STRATA, strata, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root (rootless is another issue)")


def test_run_holds_its_image_against_rmi(rootdir):
    """While rmi collects (gc.lock held exclusively), a run waits rather than mount layers about to go."""
    lock = os.open(os.path.join(rootdir, "gc.lock"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.Popen(
            [*STRATA, "--root", rootdir, "run", "--name", "held", "bb", "true"],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": REPO},
            stderr=subprocess.PIPE,
        )
        # the run cannot get past the lock: no container record appears while it is held
        wait_for(lambda: _waits_on_flock(proc.pid), what="the run to wait for the store's lock")
        assert strata(rootdir, "ps", "-aq").out == ""
    finally:
        os.close(lock)
    assert proc.wait(timeout=60) == 0
    res = strata(rootdir, "rmi", "bb", check=False)
    assert res.code == 1 and "image is being used by held" in res.err


def _waits_on_flock(client: int) -> bool:
    """Is the client, or a zygote's worker (a fork with the zygote's command line), asleep in flock?"""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if int(entry) != client and b"runner.zygote" not in f.read():
                    continue
            with open(f"/proc/{entry}/wchan") as f:
                if "lock_inode_wait" in f.read():  # flock(2) asleep (locks_lock_inode_wait)
                    return True
        except (FileNotFoundError, ProcessLookupError):
            continue
    return False


def test_run_and_rmi_in_parallel_never_mount_a_removed_layer(rootdir, full_busybox):
    failures: list[str] = []

    def runs() -> None:
        for _ in range(25):
            res = strata(rootdir, "run", "--rm", "bb", "true", check=False)
            if res.code != 0 and "Unable to find image" not in res.err:
                failures.append(res.err)

    thread = threading.Thread(target=runs)
    thread.start()
    try:
        for _ in range(25):
            strata(rootdir, "rmi", "bb", check=False)
            strata(rootdir, "import", full_busybox, "bb:latest", "--change", 'CMD ["/bin/sh"]')
    finally:
        thread.join()
    assert failures == []
    assert strata(rootdir, "system", "check").code == 0


def test_system_check_reports_what_a_killed_writer_left(rootdir):
    leftover = os.path.join(rootdir, "tmp", "txn-killed")
    os.makedirs(leftover)
    with open(os.path.join(leftover, "1-layer-blob"), "wb") as f:
        f.write(b"x" * 100_000)
    res = strata(rootdir, "system", "check", check=False)
    assert res.code == 0 and "tmp/txn-killed: 100000 bytes staged by a writer that died" in res.out
    strata(rootdir, "tag", "bb", "bb:again")  # the next writer sweeps it
    assert not os.path.exists(leftover) and strata(rootdir, "system", "check").code == 0
