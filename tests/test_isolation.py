"""The fences around a container, each tried for real from inside one, as a hostile user would: one
test per fence (docs/ARCHITECTURE.md, "Security model", lists them)."""

from __future__ import annotations

import os
import subprocess

import pytest
from helpers import strata

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root (rootless is another issue)")

SECRET = b"host-secret-0123456789"


@pytest.fixture
def loop_device(tmp_path):
    """A real loop device over a file that starts with SECRET; detached (by its name) afterwards."""
    image = tmp_path / "disk.img"
    image.write_bytes(SECRET + bytes(1024 * 1024 - len(SECRET)))
    device = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True,
                            check=True).stdout.strip()
    try:
        yield device, image
    finally:
        subprocess.run(["losetup", "-d", device], check=True)


def test_a_container_cannot_read_or_write_a_host_block_device(rootdir, loop_device):
    device, image = loop_device
    rdev = os.stat(device).st_rdev
    out = strata(rootdir, "run", "--rm", "bb", "sh", "-c",
                 f"mknod /dev/l b {os.major(rdev)} {os.minor(rdev)} && echo made; "
                 "head -c 22 /dev/l 2>&1; echo; echo pwned | dd of=/dev/l seek=2 2>&1; "
                 "cat /dev/null && echo null-ok; head -c 4 /dev/zero | wc -c", check=False).out
    assert "made" in out  # mknod is allowed, as in Docker: the node is useless
    assert SECRET.decode() not in out
    assert out.count("Operation not permitted") == 2, out
    assert "null-ok" in out and out.split()[-1] == "4"  # the standard nodes work
    assert image.read_bytes()[:len(SECRET) + 1024].startswith(SECRET) and b"pwned" not in image.read_bytes()
