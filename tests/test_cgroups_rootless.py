"""A rootless container's cgroup (issue 17): under the cgroup v2 subtree delegated to the user (as
systemd delegates user@UID.service), nowhere else. This host's cgroup v2 hierarchy has no controllers
(they are bound to v1), so the tree here is a file-level stand-in, walked as the user would."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from runner import cgroups
from runner.oci import spec as oci_spec

USER = 4242
SERVICE = f"user.slice/user-{USER}.slice/user@{USER}.service"


def _as_user(body) -> int:
    """``body()`` in a child with every id the user's; its exit code (0: true, 1: false)."""
    pid = os.fork()
    if pid == 0:
        code = 2
        try:
            os.setgroups([])
            os.setresgid(USER, USER, USER)
            os.setresuid(USER, USER, USER)
            code = 0 if body() else 1
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.fixture
def tree():
    """A cgroup v2 root whose user@4242.service belongs to the user, with cpu, memory and pids
    enabled for its children, and the user's own group below it."""
    top = tempfile.mkdtemp(prefix="strata-cgroot-", dir="/tmp")
    try:
        os.chmod(top, 0o755)
        root = os.path.join(top, "cg")
        own = os.path.join(SERVICE, "app.slice", "shell.scope")
        os.makedirs(os.path.join(root, own))
        for d in ("", "user.slice", f"user.slice/user-{USER}.slice", SERVICE):
            with open(os.path.join(root, d, "cgroup.controllers"), "w") as f:
                f.write("cpuset cpu io memory pids\n")
            with open(os.path.join(root, d, "cgroup.subtree_control"), "w") as f:
                f.write("cpu memory pids\n")
        for dirpath, dirs, files in os.walk(os.path.join(root, SERVICE)):
            for name in [".", *dirs, *files]:
                os.chown(os.path.join(dirpath, name), USER, USER)
        with open(os.path.join(top, "self"), "w") as f:
            f.write(f"0::/{own}\n")
        os.chmod(os.path.join(top, "self"), 0o644)
        yield root, os.path.join(top, "self")
    finally:
        shutil.rmtree(top)


def test_the_delegated_subtree_is_the_highest_group_of_the_users(tree):
    root, own = tree
    assert _as_user(lambda: cgroups.delegated_v2(root, own) == SERVICE) == 0
    assert cgroups.delegated_v2(root, own) is None  # root owns none of it (and is no ordinary user)


def test_no_delegation_where_cpu_and_memory_are_not_enabled_or_the_host_is_not_v2(tree):
    root, own = tree
    with open(os.path.join(root, SERVICE, "cgroup.subtree_control"), "w") as f:
        f.write("pids\n")
    assert _as_user(lambda: cgroups.delegated_v2(root, own) is None) == 0
    os.unlink(os.path.join(root, "cgroup.controllers"))  # a v1 or hybrid host's root
    with open(os.path.join(root, SERVICE, "cgroup.subtree_control"), "w") as f:
        f.write("cpu memory pids\n")
    assert _as_user(lambda: cgroups.delegated_v2(root, own) is None) == 0


def test_a_rootless_group_goes_under_the_subtree_and_takes_limits(tree):
    """What ``for_host`` gives the user there: its groups enabled from the subtree down (nothing
    above it is written), the limits in the container's group, no device program loaded."""
    root, _ = tree

    def make() -> bool:
        cg = cgroups.V2("c1", root, f"{SERVICE}/strata/c1", delegated=SERVICE)
        cg.create()
        cg.limit(512, 64 << 20)
        group = os.path.join(root, SERVICE, "strata", "c1")
        with open(os.path.join(group, "memory.max")) as f:
            memory = f.read()
        with open(os.path.join(root, SERVICE, "strata", "cgroup.subtree_control")) as f:
            enabled = f.read()
        return memory == str(64 << 20) and "+cpu" in enabled and "+memory" in enabled

    assert _as_user(make) == 0
    assert not os.path.exists(os.path.join(root, "strata"))  # nothing outside the subtree


def test_rootless_limits_reach_the_config_only_with_a_cgroup():
    record = {
        "Id": "c" * 64,
        "Command": ["true"],
        "Config": {"Tty": False, "Env": [], "WorkingDir": "", "User": "", "Hostname": "h"},
        "HostConfig": {"NetworkMode": "none", "Memory": 64 << 20, "CpuShares": 512},
        "Cgroup": {"Version": 2},
    }
    resources = oci_spec.for_container(record, "/r", {}, rootless=(1000, 1000))["linux"]["resources"]
    assert resources["memory"]["limit"] == 64 << 20 and resources["cpu"]["shares"] == 512
    assert "devices" not in resources  # (the user namespace keeps host devices out)
    record["Cgroup"]["Version"] = 0
    assert oci_spec.for_container(record, "/r", {}, rootless=(1000, 1000))["linux"]["resources"] == {}
