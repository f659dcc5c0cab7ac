# ruff: noqa: F401, F811 (test_oci_runtime's fixtures, imported: pytest passes them by these names)
"""``strata-oci update``: new limits reach a running container's cgroup, on this host's v1 hierarchies
for real (the container's processes feel them: a pids limit stops a fork, a cpuset pins what runs
and what is exec'd later) and through cgroup v2's files on a fake root (the host's v2 hierarchy has
no controllers); on a host with cgroup v2 alone (the lab's VMs, vagrant/) the same tests run on its
real v2 files. Bad input is one line, exit 1, and changes nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
from helpers import REPO
from test_oci_runtime import CGROUP_PARENT, CGROUP_ROOT, OCI, _cgroup_dirs, _conmon, _reaped, bundle, oci, root, state

from runner import cgroups
from runner.errors import RunnerError
from runner.oci import resources

MB = 1 << 20


def _oci_input(root: str, stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    """strata-oci with ``stdin`` on its standard input (``--resources -``, as containerd's shim)."""
    return subprocess.run(
        [*OCI, "--root", root, *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
        timeout=60,
    )


def _read(*parts: str) -> str:
    with open(os.path.join(*parts)) as f:
        return f.read().strip()


# v1 (or hybrid: this project's development host) or v2 alone (the lab's VMs); v2's values are read
# back in v1's terms: memory + swap, and the weight that the shares make
V2 = os.path.isfile(os.path.join(CGROUP_ROOT, "cgroup.controllers"))


def _dir(controller: str, group: str) -> str:
    return os.path.join(CGROUP_ROOT, group) if V2 else os.path.join(CGROUP_ROOT, controller, group)


def _memory(group: str) -> tuple[str, str]:
    """The memory limit and memory + swap."""
    d = _dir("memory", group)
    if V2:
        limit = _read(d, "memory.max")
        return limit, str(int(limit) + int(_read(d, "memory.swap.max")))
    return _read(d, "memory.limit_in_bytes"), _read(d, "memory.memsw.limit_in_bytes")


def _cpu(group: str) -> list[str]:
    """Shares (v2: the weight), quota and period."""
    d = _dir("cpu", group)
    if V2:
        return [_read(d, "cpu.weight"), *_read(d, "cpu.max").split()]
    return [_read(d, f) for f in ("cpu.shares", "cpu.cfs_quota_us", "cpu.cfs_period_us")]


def _shares(shares: int) -> str:
    return str(cgroups.shares_to_weight(shares)) if V2 else str(shares)


@pytest.fixture
def running(tmp_path, root, bundle):
    """A running container (``sleep``) made with memory 64M / memory+swap 128M and no pids limit."""
    if not V2 and not os.path.isdir(os.path.join(CGROUP_ROOT, "memory")):
        pytest.fail("this host has neither a v1 memory hierarchy nor cgroup v2 alone")
    b = bundle(["sleep", "1000"], cid="u1")
    config = json.loads(open(os.path.join(b, "config.json")).read())
    config["linux"]["resources"] = {"memory": {"limit": 64 * MB, "swap": 128 * MB}}
    open(os.path.join(b, "config.json"), "w").write(json.dumps(config))
    conmon, pid, _ = _conmon(tmp_path, root, b, "u1")
    try:
        oci(root, "start", "u1", check=True)
        yield pid
        oci(root, "kill", "u1", "KILL", check=True)
        assert _reaped(conmon) == -signal.SIGKILL
        oci(root, "delete", "u1", check=True)
        assert _cgroup_dirs(f"{CGROUP_PARENT}/u1") == []  # cpuset and pids too, which update made
    finally:
        if conmon.poll() is None:
            os.kill(pid, signal.SIGKILL)
            conmon.wait(timeout=30)


def test_memory_and_cpu_limits_change_in_place_in_the_order_the_kernel_takes(tmp_path, root, running):
    group = f"{CGROUP_PARENT}/u1"
    # up past the old memory+swap: memory+swap must go first, or the kernel refuses the memory limit
    oci(root, "update", "--memory", "256m", "--memory-swap", "512m", "u1", check=True)
    assert _memory(group) == (str(256 * MB), str(512 * MB))
    oci(root, "update", "--memory", "32M", "--memory-swap", "64MiB", "u1", check=True)  # down: the other way
    assert _memory(group) == (str(32 * MB), str(64 * MB))
    oci(root, "update", "--cpu-shares", "256", "--cpu-quota", "50000", "--cpu-period", "100000", "u1", check=True)
    assert _cpu(group) == [_shares(256), "50000", "100000"]
    # --resources: the runtime-spec's LinuxResources, as containerd's shim sends it (zeros and empties: unchanged)
    (tmp_path / "r.json").write_text(
        json.dumps(
            {
                "memory": {"limit": 100 * MB, "swap": 200 * MB},
                "cpu": {"shares": 0, "period": 200000},
                "hugepageLimits": [],
                "unified": {},
            }
        )
    )
    oci(root, "update", "--resources", str(tmp_path / "r.json"), "u1", check=True)
    assert _memory(group)[0] == str(100 * MB)
    assert _cpu(group) == [_shares(256), "50000", "200000"]
    recorded = json.loads(open(os.path.join(root, "u1", "state.json")).read())["resources"]
    assert recorded["memory"] == {"limit": 100 * MB, "swap": 200 * MB}
    assert recorded["cpu"] == {"shares": 256, "quota": 50000, "period": 200000}
    assert state(root, "u1")["status"] == "running"


def test_a_pids_limit_and_a_cpuset_are_felt_by_the_container_and_its_later_execs(root, running):
    pid = running
    group = f"{CGROUP_PARENT}/u1"
    update = _oci_input(root, json.dumps({"pids": {"limit": 3}}), "update", "--resources", "-", "u1")
    assert update.returncode == 0, update.stderr
    pids = _dir("pids", group)
    assert _read(pids, "pids.max") == "3"
    assert _read(pids, "cgroup.procs").split() == [str(pid)]  # PID 1 moved into the group made for it
    # PID 1 + the exec's shell + one sleep: the second sleep cannot be forked
    forks = oci(root, "exec", "u1", "sh", "-c", "sleep 100 >/dev/null 2>&1 & sleep 100 >/dev/null 2>&1 & echo done")
    assert "can't fork" in forks.stderr or "Resource temporarily unavailable" in forks.stderr, forks.stderr
    oci(root, "update", "--pids-limit", "-1", "u1", check=True)
    assert _read(pids, "pids.max") == "max"

    oci(root, "update", "--cpuset-cpus", "0", "u1", check=True)
    cpuset = _dir("cpuset", group)
    assert _read(cpuset, "cpuset.cpus") == "0" and str(pid) in _read(cpuset, "cgroup.procs").split()
    assert "Cpus_allowed_list:\t0\n" in open(f"/proc/{pid}/status").read()
    later = oci(root, "exec", "u1", "cat", "/proc/self/status", check=True).stdout
    assert "Cpus_allowed_list:\t0\n" in later  # an exec joins the cpuset too
    assert sorted(json.loads(oci(root, "ps", "--format", "json", "u1", check=True).stdout)) == sorted(
        int(p) for p in _read(cpuset, "cgroup.procs").split()
    )


@pytest.mark.parametrize(
    "args, stdin, message",
    [
        (["--memory", "lots"], None, "invalid size: 'lots'"),
        (["--cpu-quota", "x"], None, "--cpu-quota x: a number expected"),
        (["--cpuset-cpus", "0;1"], None, "cpu.cpus must be a list such as 0-2,4"),
        (["--resources", "-"], {"blockIO": {"weight": 10}}, "resources: blockIO is not supported by strata's update"),
        (["--resources", "-"], {"devices": [{"allow": True, "access": "rwm"}]}, "devices is not supported"),
        (["--resources", "-"], {"memory": {"reservation": MB}}, "memory.reservation is not supported"),
        (["--resources", "-", "--memory", "1m"], None, "--resources and the flags exclude each other"),
        ([], None, "nothing to update"),
        (["--memory-reservation", "1m"], None, "unrecognized arguments: --memory-reservation"),
    ],
)
def test_bad_updates_are_one_line_and_change_nothing(root, running, args, stdin, message):
    memory = os.path.join(_dir("memory", f"{CGROUP_PARENT}/u1"), "memory.max" if V2 else "memory.limit_in_bytes")
    res = _oci_input(root, json.dumps(stdin) if stdin is not None else "", "update", *args, "u1")
    assert res.returncode == 1 and res.stdout == "" and res.stderr.count("\n") == 1, res.stderr
    assert message in res.stderr, res.stderr
    assert _read(memory) == str(64 * MB)
    assert "resources" not in json.loads(open(os.path.join(root, "u1", "state.json")).read())


def test_update_of_a_missing_or_stopped_container_fails_in_one_line(tmp_path, root, bundle):
    res = oci(root, "update", "--memory", "1m", "nope")
    assert res.returncode == 1 and res.stderr.strip() == "strata-oci: container does not exist"
    conmon, pid, _ = _conmon(tmp_path, root, bundle(["sh", "-c", "exit 0"], cid="u2"), "u2")
    try:
        oci(root, "start", "u2", check=True)
        assert _reaped(conmon) == 0
        res = oci(root, "update", "--memory", "1m", "u2")
        assert res.returncode == 1 and res.stderr.strip() == "strata-oci: container not running"
        oci(root, "delete", "u2", check=True)
    finally:
        if conmon.poll() is None:
            os.kill(pid, signal.SIGKILL)
            conmon.wait(timeout=30)


def test_cgroup_v2_update_on_a_fake_root(tmp_path):
    fake = tmp_path / "cg"
    group = fake / "pods" / "c1"
    group.mkdir(parents=True)
    for d in (fake, fake / "pods"):
        (d / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
        (d / "cgroup.subtree_control").write_text("cpu memory pids\n")
    cg = cgroups.V2("c1", str(fake), path="/pods/c1")
    now = resources.update(
        cg,
        {"memory": {"limit": 64 * MB, "swap": 128 * MB}, "cpu": {"quota": 50000}},
        {"memory": {"limit": 256 * MB, "swap": 512 * MB}, "cpu": {"period": 200000, "shares": 2048}},
    )
    assert (group / "memory.max").read_text() == str(256 * MB)
    assert (group / "memory.swap.max").read_text() == str(256 * MB)  # v2's swap alone: (memory + swap) - memory
    assert (group / "cpu.max").read_text() == "50000 200000"  # the quota kept: cpu.max is both at once
    assert (group / "cpu.weight").read_text() == "174"
    now = resources.update(cg, now, {"cpu": {"cpus": "0-1", "mems": "0"}, "pids": {"limit": 10}})
    assert (group / "cpuset.cpus").read_text() == "0-1" and (group / "cpuset.mems").read_text() == "0"
    assert (fake / "cgroup.subtree_control").read_text() == "+cpuset"  # (a fake file: the last write)
    assert (fake / "pods" / "cgroup.subtree_control").read_text() == "+cpuset"
    assert (group / "pids.max").read_text() == "10"
    now = resources.update(cg, now, {"memory": {"limit": -1}})
    assert (group / "memory.max").read_text() == "max" and (group / "memory.swap.max").read_text() == "max"
    assert now == {
        "memory": {"limit": -1, "swap": -1},
        "cpu": {"quota": 50000, "period": 200000, "shares": 2048, "cpus": "0-1", "mems": "0"},
        "pids": {"limit": 10},
    }


def test_sizes_as_runc_spells_them():
    assert [resources.ram_in_bytes(s) for s in ("1024", "64m", "64M", "1.5g", "512KiB", "2mb", "-1")] == [
        1024,
        64 * MB,
        64 * MB,
        3 * (1 << 29),
        512 * 1024,
        2 * MB,
        -1,
    ]
    with pytest.raises(RunnerError):
        resources.ram_in_bytes("12q")
