"""podman 4.3 (Debian 12's, with conmon) with strata's union filesystem as containers-storage's
``mount_program`` (``strata-unionfs``, through its warm mount server) and strata-oci as its runtime:
load, run --rm, run -d + exec + logs + stop + rm, a memory limit that OOM-kills, and diff, commit
and image save compared with the same podman, runtime and image over fuse-overlayfs.

Each podman is private to the test: storage.conf (graphroot, runroot, the overlay driver and its
mount_program) and containers.conf (runtime, cgroupfs) named by ``CONTAINERS_STORAGE_CONF`` and
``CONTAINERS_CONF``, its mount server's directory by ``STRATA_UNIONFS_DIR``, all under one short dir
in /tmp (podman wants a runroot of <= 50 bytes). The graph root is given in storage.conf and not by
``--root``: podman 4.3 drops storage.conf's driver options when ``--root`` is given, and would mount
with kernel overlayfs instead, silently (``podman info`` then shows no mount_program; a test checks
that it shows ours). Afterwards the containers and images are removed by podman, the mount of the
overlay home it keeps is unmounted by exact path, the mount server and its spare, and any process
left that names the dir (conmon), are stopped by pid, and the cgroups podman made are removed."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

import pytest
from helpers import REPO, strata, wait_for
from mount_server_support import children, console_script, exited, naming, server_pids, stop

from unionfs import mountinfo
from unionfs.mount import daemon_pid

IMAGE = "docker.io/library/bb:latest"
LIMITS = ["--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
CGROUP_ROOT = "/sys/fs/cgroup"
STORAGE_CONF = """[storage]
driver = "overlay"
graphroot = "{d}/storage"
runroot = "{d}/run"
[storage.options.overlay]
mount_program = "{program}"
"""
CONTAINERS_CONF = """[engine]
cgroup_manager = "cgroupfs"
events_logger = "none"
runtime = "strata"
runtime_supports_json = ["crun", "runc", "strata"]
[engine.runtimes]
strata = ["{runtime}"]
"""


def _require() -> None:
    if os.geteuid() != 0:
        pytest.fail("podman with a private storage root and cgroupfs: run as root")
    missing = [p for p in ("podman", "conmon", "fuse-overlayfs", "fusermount3") if shutil.which(p) is None]
    if missing:
        pytest.fail(f"not installed: {', '.join(missing)} (make test installs them)")


def _cgroup_dirs(path: str) -> list[str]:
    return [
        os.path.join(CGROUP_ROOT, c, path)
        for c in sorted(os.listdir(CGROUP_ROOT))
        if os.path.isdir(os.path.join(CGROUP_ROOT, c, path))
    ]


class Podman:
    """One podman with its storage, run dir, config and mount server of its own."""

    def __init__(self, mount_program: str, runtime: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="strata-pmp-", dir="/tmp")
        self.servers = os.path.join(self.dir, "unionfs")
        os.mkdir(self.servers, 0o700)
        with open(os.path.join(self.dir, "storage.conf"), "w") as f:
            f.write(STORAGE_CONF.format(d=self.dir, program=mount_program))
        with open(os.path.join(self.dir, "containers.conf"), "w") as f:
            f.write(CONTAINERS_CONF.format(runtime=runtime))
        self.env = {
            **os.environ,
            "CONTAINERS_STORAGE_CONF": os.path.join(self.dir, "storage.conf"),
            "CONTAINERS_CONF": os.path.join(self.dir, "containers.conf"),
            "STRATA_UNIONFS_DIR": self.servers,
        }
        self.env.pop("PYTHONPATH", None)

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            ["podman", "--tmpdir", os.path.join(self.dir, "tmp"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
        )
        if check and res.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({res.returncode}): {res.stderr}")
        return res

    def mount_program(self) -> str:
        options = json.loads(self("info", "--format", "{{json .Store.GraphOptions}}").stdout)
        return str(options.get("overlay.mount_program", {}).get("Executable", ""))

    def cleanup(self) -> None:
        try:
            self("rm", "-af", check=False)
            self("rmi", "-af", check=False)
            home = os.path.join(self.dir, "storage", "overlay")
            if mountinfo.mounts_at(home):  # containers-storage's private bind mount of its home
                subprocess.run(["umount", home], check=True)
            servers = server_pids(self.servers)
            spares = [c for s in servers for c in children(s)]
            stop(servers)
            stop(spares)
            stop(naming(self.dir))  # conmon, or anything else of this podman's
            with open("/proc/self/mountinfo") as f:
                assert self.dir not in f.read()
        finally:
            shutil.rmtree(self.dir)


@pytest.fixture(scope="module")
def engines(tmp_path_factory, full_busybox):
    """(strata's podman, fuse-overlayfs's podman), both with strata-oci and the image loaded from
    ``strata save`` of a busybox with a few files to delete (etc/gone, etc/sub/deep/f)."""
    _require()
    base = tmp_path_factory.mktemp("podman-mp")
    rootfs = base / "rootfs"
    shutil.copytree(full_busybox, rootfs, symlinks=True)
    (rootfs / "etc" / "gone").write_text("x\n")
    (rootfs / "etc" / "sub" / "deep").mkdir(parents=True)
    (rootfs / "etc" / "sub" / "deep" / "f").write_text("hi\n")
    store = str(base / "store")
    strata(store, "import", str(rootfs), "bb:latest", "--change", 'CMD ["/bin/sh"]')
    strata(store, "save", "bb:latest", "-o", str(base / "bb.tar"))
    runtime = base / "strata-oci"  # the console script, pointed at this checkout, with a state root of ours
    state = base / "oci-state"  # (podman names none: strata-oci's default, /run/strata-oci, would outlive us)
    runtime.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m runner.oci --root {state} "$@"\n')
    runtime.chmod(0o755)
    podman_groups = [] if _cgroup_dirs("libpod_parent") else ["libpod_parent/conmon", "libpod_parent"]
    ours = Podman(console_script(str(base)), str(runtime))
    theirs = Podman(shutil.which("fuse-overlayfs") or "", str(runtime))
    try:
        for p in (ours, theirs):
            p("load", "-i", str(base / "bb.tar"))
        yield ours, theirs
    finally:
        try:
            ours.cleanup()
        finally:
            theirs.cleanup()
            for group in podman_groups:  # podman's own parent group and conmon's, if this test made them
                for d in _cgroup_dirs(group):
                    os.rmdir(d)


def test_podman_mounts_with_strata_unionfs_and_its_server(engines):
    podman, _ = engines
    assert podman.mount_program().endswith("/strata-unionfs")
    res = podman("run", "--rm", *LIMITS, IMAGE, "sh", "-c", "echo hello; cat /etc/sub/deep/f; exit 9", check=False)
    assert (res.returncode, res.stdout) == (9, "hello\nhi\n"), res.stderr
    # the first mount was made cold and started the server, which listens once it has written its pid file
    wait_for(lambda: bool(server_pids(podman.servers)), what="the mount server the first mount started")

    cid = podman(
        "run", "-d", *LIMITS, IMAGE, "sh", "-c", "echo started; trap 'echo bye; exit 3' TERM; while :; do sleep 1; done"
    ).stdout.strip()
    merged = podman("inspect", "--format", "{{.GraphDriver.Data.MergedDir}}", cid).stdout.strip()
    daemon = daemon_pid(merged)  # the union under the running container is strata's
    assert daemon is not None
    with open(f"/proc/{daemon}/stat") as f:
        assert int(f.read().rsplit(")", 1)[1].split()[1]) in server_pids(podman.servers)  # forked by the server
    res = podman("exec", cid, "sh", "-c", "echo from-exec > /tmp/x; cat /tmp/x; rm /etc/gone; ls /etc")
    assert res.stdout.startswith("from-exec\n") and "gone" not in res.stdout.split()
    podman("stop", "-t", "10", cid)
    assert podman("logs", cid).stdout == "started\nbye\n"
    assert podman("inspect", "--format", "{{.State.ExitCode}}", cid).stdout.strip() == "3"
    assert not mountinfo.mounts_at(merged) and exited(daemon)  # podman unmounted: the daemon ended
    podman("rm", cid)
    assert not os.path.exists(merged)


def test_a_memory_limit_oom_kills_the_container(engines):
    podman, _ = engines
    hog = ["sh", "-c", "exec dd if=/dev/zero of=/dev/null bs=64M count=1"]  # a 64 MiB buffer, touched
    res = podman("run", "--rm", "--memory", "32m", "--memory-swap", "32m", *LIMITS, IMAGE, *hog, check=False)
    assert res.returncode == 137, res.stderr  # SIGKILLed by the kernel's OOM killer
    res = podman("run", "--rm", *LIMITS, IMAGE, *hog, check=False)
    assert res.returncode == 0, res.stderr


# Changes of every kind a container makes; the second script makes directories opaque (removed
# and made again): fuse-overlayfs and strata record that differently in the upper (trusted.overlay
# xattr + char devices, .wh. files), and podman reads both through the mount (its naive diff).
CHANGES = (
    "rm /etc/gone; rm -rf /etc/sub/deep; mkdir /etc/sub/new; echo a > /etc/sub/new/a; echo m >> /etc/passwd; "
    "chmod 600 /etc/group; ln -s /etc/passwd /etc/pw.link; ln /etc/passwd /etc/pw.hard; mkdir -p /opt/x/y; "
    "echo z > /opt/x/y/z; ln /bin/busybox /bin/bb2; mkfifo /tmp/fifo"
)
OPAQUE = "rm -rf /etc/sub; mkdir -p /etc/sub/new; echo a > /etc/sub/new/a; rm -rf /root; mkdir /root"


def _top_layer(archive: str) -> list[tuple[object, ...]]:
    """The committed layer of a ``podman image save`` archive, entry by entry, times left out."""
    with tarfile.open(archive) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
        member = outer.extractfile(manifest[0]["Layers"][-1])
        assert member is not None
        with tarfile.open(fileobj=io.BytesIO(member.read())) as layer:
            entries = []
            for m in layer.getmembers():
                data = layer.extractfile(m).read() if m.isfile() else b""  # type: ignore[union-attr]
                entries.append(
                    (
                        m.name,
                        m.type,
                        oct(m.mode),
                        m.uid,
                        m.gid,
                        m.size,
                        m.linkname,
                        hashlib.sha256(data).hexdigest(),
                        sorted((k, v) for k, v in m.pax_headers.items() if not k.endswith("time")),
                    )
                )
            return entries


@pytest.mark.parametrize("name,script", [("changes", CHANGES), ("opaque", OPAQUE)])
def test_diff_commit_and_save_give_what_fuse_overlayfs_gives(engines, tmp_path, name, script):
    assert engines[1].mount_program() == shutil.which("fuse-overlayfs")
    found = {}
    for kind, podman in zip(("strata", "fuse-overlayfs"), engines, strict=True):
        podman("run", "--name", f"c-{name}", *LIMITS, IMAGE, "sh", "-c", script)
        diff = sorted(podman("diff", f"c-{name}").stdout.splitlines())
        podman("commit", "-q", f"c-{name}", f"committed-{name}")
        archive = str(tmp_path / f"{kind}.tar")
        podman("image", "save", "-o", archive, f"committed-{name}")
        listing = podman("run", "--rm", *LIMITS, f"committed-{name}", "ls", "-a", "/etc", "/etc/sub").stdout
        found[kind] = (diff, _top_layer(archive), listing)
        podman("rm", f"c-{name}")
        podman("rmi", f"committed-{name}")
    assert found["strata"] == found["fuse-overlayfs"]
    diff, layer, listing = found["strata"]
    assert "D /etc/sub/deep" in diff and "C /etc/sub" in diff and "A /etc/sub/new/a" in diff
    assert ("etc/sub/.wh.deep", tarfile.REGTYPE, "0o0") in [e[:3] for e in layer]
    assert "deep" not in listing.split()
    if name == "changes":
        assert {"D /etc/gone", "C /etc/passwd", "C /etc/group", "A /etc/pw.hard", "A /tmp/fifo"} <= set(diff)
        assert ("etc/pw.hard", tarfile.LNKTYPE, "0o100644") in [e[:3] for e in layer]  # one inode, two names
        assert "gone" not in listing.split()


def test_an_opaque_dir_below_a_whiteout_commits_as_deleted(engines):
    """A container that deletes a file and replaces a directory: podman's diff (and so commit) over
    fuse-overlayfs 1.10 loses the directory's deleted contents here (they come back in the image);
    over strata they stay deleted."""
    podman, _ = engines
    podman("run", "--name", "c-both", *LIMITS, IMAGE, "sh", "-c", f"rm /etc/gone; {OPAQUE}")
    diff = podman("diff", "c-both").stdout.splitlines()
    assert "D /etc/sub/deep" in diff and "D /etc/gone" in diff
    podman("commit", "-q", "c-both", "committed-both")
    listing = podman("run", "--rm", *LIMITS, "committed-both", "ls", "/etc/sub").stdout
    assert listing.split() == ["new"]
    podman("rm", "c-both")
    podman("rmi", "committed-both")
