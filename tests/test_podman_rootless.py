"""Rootless podman (a throwaway ordinary user, tests/rootless_support.py: its storage under its home,
its run root under its XDG_RUNTIME_DIR, /dev/fuse opened to it for the session) with strata-unionfs
as containers-storage's ``mount_program`` and runc as its runtime. The mount program runs in
podman's user and mount namespaces there, so its warm server is one of that pair's (its socket
named by them, under the user's runtime dir). Everything the user started is killed by the
fixture's teardown, its mounts unmounted, the user removed."""

from __future__ import annotations

import os
import shutil

import pytest
from helpers import strata

pytestmark = pytest.mark.skipif(
    shutil.which("podman") is None or shutil.which("runc") is None,
    reason="podman and runc are not installed (apt-get install podman runc)",
)
IMAGE = "docker.io/library/bb:latest"


def test_rootless_podman_mounts_with_strata_unionfs(rootless, rootdir, tmp_path):
    user = rootless
    base = user.make_dir(os.path.join(user.home, "podman-strata"))
    archive = os.path.join(base, "bb.tar")
    strata(rootdir, "save", "bb:latest", "-o", archive)
    user.give(archive)
    program = os.path.join(base, "strata-unionfs")  # unionfs/bin/strata-unionfs as pip installs it, on the copied code
    with open(program, "w") as f:
        f.write(
            f"#!{user.python}\nimport sys\nsys.path.insert(0, {user.src!r})\n"
            "from unionfs.client import main\nsys.exit(main())\n"
        )
    os.chmod(program, 0o755)
    user.give(program)
    with open(os.path.join(base, "storage.conf"), "w") as f:
        f.write(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{base}/storage"\n'
            f'runroot = "{user.runtime_dir}/containers"\n'
            f'[storage.options.overlay]\nmount_program = "{program}"\n'
        )
    with open(os.path.join(base, "containers.conf"), "w") as f:
        f.write('[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "none"\nruntime = "runc"\n')
    user.give(base)
    env = {
        "CONTAINERS_STORAGE_CONF": os.path.join(base, "storage.conf"),
        "CONTAINERS_CONF": os.path.join(base, "containers.conf"),
    }
    limits = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]  # (no raising the user's hard limits)

    def podman(*args: str, check: bool = True):
        return user.run("podman", *args, env=env, check=check, cwd=base)

    try:
        podman("load", "-q", "-i", archive)
        res = podman(
            "run",
            "--rm",
            "--network",
            "none",
            *limits,
            IMAGE,
            "sh",
            "-c",
            "echo written > /tmp/f && cat /tmp/f && id -u",
            check=False,
        )
        assert res.code == 0, res.err
        assert res.out == "written\n0\n", res.out
        servers = os.path.join(user.runtime_dir, "strata-unionfs")
        assert [n for n in os.listdir(servers) if n.endswith(".sock")], "no warm mount server for podman's namespaces"
        name = "kept"
        podman("run", "--name", name, "--network", "none", *limits, IMAGE, "sh", "-c", "echo changed > /etc/motd")
        diff = podman("diff", name).out.splitlines()
        assert "A /etc/motd" in diff, diff
        podman("rm", name)
    finally:
        podman("rm", "-af", check=False)
        podman("rmi", "-af", check=False)
