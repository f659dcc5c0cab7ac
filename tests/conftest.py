import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import tar_bytes  # noqa: E402


@pytest.fixture
def root(tmp_path):
    """An empty store root in a temp dir."""
    return str(tmp_path / "store")


@pytest.fixture
def busybox_rootfs(tmp_path):
    """A small real rootfs: the host's busybox-static and a few applet links."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("busybox-static is required (make test installs it)")
    rootfs = tmp_path / "rootfs"
    for d in ("bin", "etc", "tmp", "dev", "proc"):
        (rootfs / d).mkdir(parents=True)
    shutil.copy(busybox, rootfs / "bin" / "busybox")
    for applet in ("sh", "ls", "cat", "echo", "sleep"):
        os.symlink("busybox", rootfs / "bin" / applet)
    (rootfs / "etc" / "hostname").write_text("strata\n")
    os.chmod(rootfs / "tmp", 0o1777)
    return str(rootfs)


@pytest.fixture
def small_layer():
    return tar_bytes([
        {"name": "etc/", "type": "dir"},
        {"name": "etc/motd", "data": b"hello\n"},
        {"name": "bin/", "type": "dir"},
        {"name": "bin/tool", "data": b"#!/bin/sh\necho tool\n", "mode": 0o755},
    ])
