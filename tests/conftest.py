import contextlib
import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import stop_process, strata, tar_bytes, zygote_pid  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def zygote_dir(tmp_path_factory):
    """The suite's own zygote directory (never the user's); its zygote is stopped at the end."""
    directory = str(tmp_path_factory.mktemp("zygote"))
    os.chmod(directory, 0o700)
    os.environ["STRATA_ZYGOTE_DIR"] = directory
    yield directory
    if (pid := zygote_pid(directory)) is not None:
        stop_process(pid)


def _host_network() -> tuple[bool, bool]:
    """Is there a bridge ``strata0``, and nftables' ``table ip strata``? (root's default network)"""
    table = (
        os.geteuid() == 0
        and shutil.which("nft") is not None
        and subprocess.run(["nft", "list", "table", "ip", "strata"], capture_output=True).returncode == 0
    )
    return os.path.exists("/sys/class/net/strata0"), table


@pytest.fixture(scope="session", autouse=True)
def default_network():
    """The default network's bridge and strata's nftables table outlive containers, as docker0 and
    Docker's chains do: the suite removes those it made (by their exact names) when it ends."""
    bridge_before, table_before = _host_network()
    yield
    bridge_after, table_after = _host_network()
    if bridge_after and not bridge_before:
        subprocess.run(["ip", "link", "delete", "strata0", "type", "bridge"], check=True)
        with contextlib.suppress(OSError):  # its lease dir, empty once every container has gone
            os.rmdir("/run/strata/net/leases/strata0")
    if table_after and not table_before:
        subprocess.run(["nft", "delete", "table", "ip", "strata"], check=True)


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
    return tar_bytes(
        [
            {"name": "etc/", "type": "dir"},
            {"name": "etc/motd", "data": b"hello\n"},
            {"name": "bin/", "type": "dir"},
            {"name": "bin/tool", "data": b"#!/bin/sh\necho tool\n", "mode": 0o755},
        ]
    )


@pytest.fixture(scope="session")
def full_busybox(tmp_path_factory):
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("busybox-static is required (make test installs it)")
    root = tmp_path_factory.mktemp("bbfull") / "rootfs"
    for d in ("bin", "etc", "tmp", "root", "proc", "sys", "dev"):
        (root / d).mkdir(parents=True)
    shutil.copy(busybox, root / "bin" / "busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", root / "bin" / applet)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    os.chmod(root / "tmp", 0o1777)
    return str(root)


@pytest.fixture
def rootdir(tmp_path, full_busybox):
    root = str(tmp_path / "store")
    strata(root, "import", full_busybox, "bb:latest", "--change", 'CMD ["/bin/sh"]')
    yield root
    # every test leaves no container process, mount or cgroup behind, whatever it did
    containers = os.path.join(root, "containers")
    for cid in os.listdir(containers) if os.path.isdir(containers) else []:
        if len(cid) == 64:
            strata(root, "rm", "-f", cid, check=False)
    with open("/proc/self/mountinfo") as f:
        assert not [line for line in f if root in line]
    for cg in ("/sys/fs/cgroup/cpu/strata", "/sys/fs/cgroup/memory/strata"):
        if os.path.isdir(cg):
            leftover = [
                d
                for d in os.listdir(cg)
                if os.path.isdir(os.path.join(cg, d)) and os.path.isdir(os.path.join(containers, d))
            ]
            assert leftover == []


@pytest.fixture(scope="session")
def rootless(request):
    """A throwaway unprivileged user that runs strata (tests/rootless_support.py): created for the
    session, removed with everything it left at the end. Needs root."""
    import contextlib

    from rootless_support import rootless_user

    if os.geteuid() != 0:
        pytest.skip("the rootless tests create a user: run them as root")
    capture = request.config.pluginmanager.getplugin("capturemanager")

    def log(message):  # shown as it happens (a cold venv build takes a while), not captured
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print(message, file=sys.stderr, flush=True)

    with rootless_user(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), log) as user:
        yield user
