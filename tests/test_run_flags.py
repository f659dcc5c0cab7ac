"""run/create's flags as Docker's (issue 19, Run flags), each against a real container: what the
command is (--entrypoint, --env-file, --init), what it may do (--cap-add/--cap-drop, --privileged,
--security-opt no-new-privileges), its limits (--pids-limit, --cpus, --cpuset-cpus, --memory-swap,
--ulimit), its names (--add-host, --dns), and its end (--stop-signal, --stop-timeout, --restart).
Bad values: one line in Docker's words, nothing left behind."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time

import pytest
from helpers import REPO, STRATA, strata, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root (rootless: test_rootless_verbs.py)")
HERE = os.path.dirname(os.path.abspath(__file__))


def _ends(pid: int, timeout: float = 30) -> bool:
    """Does ``pid``, a strata process (``runner`` in its command line), end within ``timeout``? Waited
    for by its pidfd; a pid that is gone, or now another program's, has."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        try:  # (the pidfd pins the process: this is the command line of the one it waits for)
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"runner" not in f.read():
                    return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def inspect(root: str, template: str, ref: str) -> str:
    return strata(root, "inspect", "-f", template, ref).out.strip()


def refused(root: str, *args: str, code: int = 125) -> str:
    """Run a command that must fail in one line; that line (stderr), nothing created."""
    before = strata(root, "ps", "-aq").out
    res = strata(root, *args, check=False)
    assert res.code == code and res.out == "", (args, res)
    assert strata(root, "ps", "-aq").out == before, args
    return res.err.strip()


# cgroup v2 alone (the lab's VMs), or v1 / hybrid (this project's development host): both are tested
V2 = os.path.isfile("/sys/fs/cgroup/cgroup.controllers")


def group_dir(cid: str, controller: str) -> str:
    return f"/sys/fs/cgroup/strata/{cid}" if V2 else f"/sys/fs/cgroup/{controller}/strata/{cid}"


def cgroup_file(cid: str, controller: str, name: str) -> str:
    with open(os.path.join(group_dir(cid, controller), name)) as f:
        return f.read().strip()


# -- what runs --------------------------------------------------------------------------------------
def test_entrypoint_replaces_the_images_and_its_cmd(rootdir):
    strata(rootdir, "run", "--name", "base", "bb", "true")
    strata(rootdir, "commit", "-c", 'ENTRYPOINT ["echo", "ep"]', "-c", 'CMD ["default"]', "base", "withep")

    def run(*a: str) -> str:
        return strata(rootdir, "run", "--rm", *a).out

    assert run("withep") == "ep default\n"
    assert run("withep", "given") == "ep given\n"
    assert run("--entrypoint", "echo", "withep") == "\n"  # Docker: the image's CMD goes with its ENTRYPOINT
    assert run("--entrypoint", "echo", "withep", "hi") == "hi\n"
    assert run("--entrypoint", "", "withep", "echo", "cleared") == "cleared\n"
    assert refused(rootdir, "run", "--entrypoint", "", "withep") == "Error: no command specified"
    cid = strata(rootdir, "create", "--entrypoint", "/bin/echo", "withep", "x").out.strip()
    assert inspect(rootdir, "{{json .Config.Entrypoint}} {{json .Config.Cmd}}", cid) == '["/bin/echo"] ["x"]'


def test_env_file_is_read_as_dockers(rootdir, tmp_path, monkeypatch):
    env = tmp_path / "app.env"
    env.write_bytes(
        b"\xef\xbb\xbf# a comment\n\nPLAIN=one\n  SPACED= keeps  spaces \nEMPTY=\nFROM_HERE\nUNSET_HERE\n"
        b"OVERRIDDEN=file\n"
    )
    monkeypatch.setenv("FROM_HERE", "client")
    monkeypatch.delenv("UNSET_HERE", raising=False)
    out = strata(
        rootdir,
        "run",
        "--rm",
        "--env-file",
        str(env),
        "-e",
        "OVERRIDDEN=flag",
        "bb",
        "sh",
        "-c",
        'echo "[$PLAIN][$SPACED][$EMPTY][$FROM_HERE][${UNSET_HERE-unset}][$OVERRIDDEN]"',
    ).out
    assert out == "[one][ keeps  spaces ][][client][unset][flag]\n"
    assert (
        refused(rootdir, "run", "--env-file", str(tmp_path / "nope"), "bb", "true")
        == f"Error: open {tmp_path / 'nope'}: no such file or directory"
    )
    (tmp_path / "bad.env").write_text("BAD NAME=x\n")
    assert (
        refused(rootdir, "run", "--env-file", str(tmp_path / "bad.env"), "bb", "true")
        == "Error: poorly formatted environment: variable 'BAD NAME' contains whitespaces"
    )


def test_labels_are_the_images_and_the_flags(rootdir):
    strata(rootdir, "run", "--name", "lab", "-l", "tier=web", "--label", "bare", "bb", "true")
    assert inspect(rootdir, "{{json .Config.Labels}}", "lab") == '{"bare":"","tier":"web"}'
    assert strata(rootdir, "ps", "-a", "-f", "label=tier=web", "--format", "{{.Names}}").out == "lab\n"


def _zombies(root: str, name: str) -> int:
    """Zombie processes in the container (state Z in /proc/PID/stat)."""
    out = strata(root, "exec", name, "sh", "-c", "cat /proc/[0-9]*/stat 2>/dev/null").out
    return sum(1 for line in out.splitlines() if line.rsplit(")", 1)[-1].split()[:1] == ["Z"])


def test_init_reaps_orphans_that_pid_1_would_leave_as_zombies(rootdir):
    strata(rootdir, "run", "-d", "--name", "plain", "bb", "sleep", "300")
    strata(rootdir, "run", "-d", "--name", "reaped", "--init", "bb", "sleep", "300")
    for name in ("plain", "reaped"):  # an orphan: re-parented to the namespace's PID 1
        strata(rootdir, "exec", name, "sh", "-c", "(true &)")
    wait_for(lambda: _zombies(rootdir, "plain") == 1, what="a zombie under a PID 1 that never waits")
    wait_for(lambda: _zombies(rootdir, "reaped") == 0, what="--init's PID 1 reaping the orphan")
    assert strata(rootdir, "exec", "reaped", "cat", "/proc/1/comm").out == "strata-init\n"
    ps = strata(rootdir, "exec", "reaped", "ps", "-o", "pid,args").out.splitlines()
    assert ps[1].split() == ["1", "strata-init"] and ps[2].split()[1:] == ["sleep", "300"]
    assert inspect(rootdir, "{{.HostConfig.Init}}", "reaped") == "true"


def test_init_forwards_signals_and_passes_the_exit_code_on(rootdir):
    assert strata(rootdir, "run", "--rm", "--init", "bb", "sh", "-c", "exit 3", check=False).code == 3
    cold = subprocess.run(  # in the client's own process, which has not imported the reaper before pivot_root
        [*STRATA, "--root", rootdir, "run", "--rm", "--init", "bb", "sh", "-c", "cat /proc/1/comm; exit 4"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": REPO, "STRATA_NO_ZYGOTE": "1"},
    )
    assert (cold.returncode, cold.stdout, cold.stderr) == (4, "strata-init\n", "")
    # sleep as PID 1 ignores SIGTERM (the kernel drops it): stop waits, then kills. As --init's child, it dies
    strata(rootdir, "run", "-d", "--name", "fwd", "--init", "bb", "sleep", "300")
    began = time.monotonic()
    strata(rootdir, "stop", "-t", "60", "fwd")
    assert time.monotonic() - began < 30
    assert inspect(rootdir, "{{.State.ExitCode}}", "fwd") == "143"  # 128 + SIGTERM, as tini reports it


# -- what it may do ---------------------------------------------------------------------------------
def _cap_eff(root: str, *flags: str) -> int:
    out = strata(root, "run", "--rm", *flags, "bb", "grep", "CapEff", "/proc/self/status").out
    return int(out.split()[1], 16)


DOCKER_CAPS = 0xA80425FB
CAP = {"CHOWN": 0, "NET_ADMIN": 12, "SYS_ADMIN": 21, "SYS_PTRACE": 19}


def test_cap_add_and_cap_drop_change_the_set_as_dockers(rootdir):
    assert _cap_eff(rootdir) == DOCKER_CAPS
    assert _cap_eff(rootdir, "--cap-drop", "chown") == DOCKER_CAPS & ~(1 << CAP["CHOWN"])
    assert _cap_eff(rootdir, "--cap-add", "CAP_NET_ADMIN") == DOCKER_CAPS | 1 << CAP["NET_ADMIN"]
    assert _cap_eff(rootdir, "--cap-drop", "ALL", "--cap-add", "chown") == 1 << CAP["CHOWN"]
    assert _cap_eff(rootdir, "--cap-add", "net_admin", "--cap-drop", "NET_ADMIN") & 1 << CAP["NET_ADMIN"]  # add wins
    # and for real: chown refused without CHOWN; mount allowed by the kernel and by seccomp with SYS_ADMIN
    chown = "touch /f && chown 1 /f && echo chowned"
    assert strata(rootdir, "run", "--rm", "bb", "sh", "-c", chown).out == "chowned\n"
    assert strata(rootdir, "run", "--rm", "--cap-drop", "CHOWN", "bb", "sh", "-c", chown, check=False).code == 1
    mount = "mkdir /m && mount -t tmpfs none /m && echo mounted"
    assert strata(rootdir, "run", "--rm", "bb", "sh", "-c", mount, check=False).code != 0
    assert strata(rootdir, "run", "--rm", "--cap-add", "SYS_ADMIN", "bb", "sh", "-c", mount).out == "mounted\n"
    strata(rootdir, "run", "-d", "--name", "capped", "--cap-drop", "ALL", "bb", "sleep", "300")
    assert strata(rootdir, "exec", "capped", "grep", "CapEff", "/proc/self/status").out.split()[1] == "0" * 16
    assert inspect(rootdir, "{{json .HostConfig.CapDrop}}", "capped") == '["ALL"]'
    assert refused(rootdir, "run", "--cap-add", "FOO", "bb", "true") == 'Error: unknown capability: "CAP_FOO"'


def test_privileged_has_every_capability_no_filter_no_masks_and_the_hosts_devices(rootdir):
    with open("/proc/self/status") as f:
        bounding = next(line.split()[1] for line in f if line.startswith("CapBnd"))
    device = next(name for name in ("loop-control", "kmsg", "mem", "btrfs-control") if os.path.exists(f"/dev/{name}"))
    script = (
        f"grep -E '^(CapEff|Seccomp):' /proc/self/status; head -c 5 /proc/timer_list | wc -c; ls /dev/{device}; "
        "grep ' /sys ' /proc/mounts"
    )
    out = strata(rootdir, "run", "--rm", "--privileged", "bb", "sh", "-c", script).out.splitlines()
    assert out[0].split()[1] == bounding
    assert out[1].split() == ["Seccomp:", "0"]
    assert out[2] == "5"  # /proc/timer_list as it is, not masked with /dev/null
    assert out[3] == f"/dev/{device}"
    assert " rw," in out[4]
    out = strata(
        rootdir,
        "run",
        "--rm",
        "bb",
        "sh",
        "-c",
        f"head -c 5 /proc/timer_list | wc -c; ls /dev/{device} 2>&1; grep ' /sys ' /proc/mounts",
    ).out.splitlines()
    assert out[0] == "0" and "No such file" in out[1] and " ro," in out[2]


@pytest.fixture(scope="module")
def setuid_image(tmp_path_factory, full_busybox):
    """busybox plus /bin/whoami-euid, a static program that prints its effective uid, setuid root."""
    import shutil

    root = tmp_path_factory.mktemp("suid") / "rootfs"
    shutil.copytree(full_busybox, root, symlinks=True)
    source = tmp_path_factory.mktemp("src") / "euid.c"
    source.write_text(
        '#include <stdio.h>\n#include <unistd.h>\nint main(void){printf("%d\\n",(int)geteuid());return 0;}\n'
    )
    subprocess.run(["gcc", "-static", "-O1", "-o", str(root / "bin" / "euid"), str(source)], check=True)
    os.chmod(root / "bin" / "euid", 0o4755)
    return str(root)


def test_setuid_programs_gain_privileges_unless_no_new_privileges(rootdir, setuid_image):
    """Docker's default: no_new_privs off (sudo works); --security-opt no-new-privileges turns it on."""
    strata(rootdir, "import", setuid_image, "suid")

    def run(*flags: str) -> list[str]:
        return strata(
            rootdir,
            "run",
            "--rm",
            "-u",
            "nobody",
            *flags,
            "suid",
            "sh",
            "-c",
            "grep NoNewPrivs /proc/self/status; /bin/euid",
        ).out.split()

    assert run() == ["NoNewPrivs:", "0", "0"]  # the setuid bit made it root
    assert run("--security-opt", "no-new-privileges") == ["NoNewPrivs:", "1", "65534"]
    assert run("--security-opt", "no-new-privileges=true") == ["NoNewPrivs:", "1", "65534"]
    assert run("--security-opt", "no-new-privileges:false") == ["NoNewPrivs:", "0", "0"]
    strata(rootdir, "run", "-d", "--name", "nnp", "--security-opt", "no-new-privileges", "suid", "sleep", "300")
    assert strata(rootdir, "exec", "-u", "nobody", "nnp", "/bin/euid").out == "65534\n"  # exec keeps it too
    assert refused(rootdir, "run", "--security-opt", "no-new-privileges=maybe", "bb", "true").startswith(
        'Error: Invalid --security-opt: "no-new-privileges=maybe"'
    )


# -- limits -----------------------------------------------------------------------------------------
def test_pids_limit_caps_the_processes(rootdir):
    cid = strata(rootdir, "run", "-d", "--pids-limit", "6", "bb", "sleep", "300").out.strip()
    assert cgroup_file(cid, "pids", "pids.max") == "6"
    out = (
        strata(
            rootdir,
            "exec",
            cid,
            "sh",
            "-c",
            # (the sleeps' output elsewhere: holding the exec's pipe, they would keep it open 60 s)
            "for i in 1 2 3 4 5 6 7 8; do sleep 60 >/dev/null 2>&1 & done 2>&1; echo done",
            check=False,
        ).out
        + strata(rootdir, "logs", cid).out
    )
    assert "can't fork" in out or "Resource temporarily unavailable" in out, out
    assert inspect(rootdir, "{{.HostConfig.PidsLimit}}", cid) == "6"
    strata(rootdir, "rm", "-f", cid)
    assert not os.path.exists(group_dir(cid, "pids"))


def test_cpus_is_a_cfs_quota_and_cpuset_pins(rootdir):
    cid = strata(
        rootdir, "run", "-d", "--cpus", "0.25", "--cpuset-cpus", "0", "bb", "sh", "-c", "while :; do :; done"
    ).out.strip()
    if V2:
        assert cgroup_file(cid, "cpu", "cpu.max") == "25000 100000"
    else:
        assert cgroup_file(cid, "cpu", "cpu.cfs_quota_us") == "25000"
        assert cgroup_file(cid, "cpu", "cpu.cfs_period_us") == "100000"
    assert cgroup_file(cid, "cpuset", "cpuset.cpus") == "0"
    assert strata(rootdir, "exec", cid, "grep", "Cpus_allowed_list", "/proc/self/status").out.split()[1] == "0"
    assert inspect(rootdir, "{{.HostConfig.NanoCpus}} {{.HostConfig.CpusetCpus}}", cid) == "250000000 0"
    used = float(strata(rootdir, "stats", "--no-stream", "--format", "{{.CPUPerc}}", cid).out.strip().rstrip("%"))
    assert 5 < used < 40, used  # a busy loop held to a quarter of a CPU
    strata(rootdir, "rm", "-f", cid)
    assert not os.path.exists(group_dir(cid, "cpuset"))
    ncpu = len(os.sched_getaffinity(0))
    assert (
        refused(rootdir, "run", "--cpus", str(ncpu + 1), "bb", "true")
        == f"Error: Range of CPUs is from 0.01 to {ncpu}.00, as there are only {ncpu} CPUs available"
    )
    err = refused(rootdir, "run", "--cpus", "abc", "bb", "true")
    assert err.startswith('strata: invalid argument "abc" for "--cpus" flag: failed to parse abc as a rational number')
    assert refused(rootdir, "run", "--cpuset-cpus", "99", "bb", "true").startswith(
        "Error: Requested CPUs are not available - requested 99, available: 0"
    )
    assert refused(rootdir, "run", "--cpuset-cpus", "1-a", "bb", "true") == "Error: Invalid value 1-a for cpuset cpus"


def test_memory_swap_is_memory_plus_swap(rootdir):
    cid = strata(rootdir, "run", "-d", "-m", "64m", "--memory-swap", "128m", "bb", "sleep", "300").out.strip()
    if V2:  # v2's swap.max is the swap alone
        assert cgroup_file(cid, "memory", "memory.max") == str(64 << 20)
        assert cgroup_file(cid, "memory", "memory.swap.max") == str(64 << 20)
    else:
        assert cgroup_file(cid, "memory", "memory.limit_in_bytes") == str(64 << 20)
        assert cgroup_file(cid, "memory", "memory.memsw.limit_in_bytes") == str(128 << 20)
    assert inspect(rootdir, "{{.HostConfig.MemorySwap}}", cid) == str(128 << 20)
    cid = strata(rootdir, "run", "-d", "-m", "64m", "--memory-swap", "-1", "bb", "sleep", "300").out.strip()
    if V2:
        assert cgroup_file(cid, "memory", "memory.swap.max") == "max"  # unlimited
    else:
        assert int(cgroup_file(cid, "memory", "memory.memsw.limit_in_bytes")) > 1 << 60  # unlimited
    assert (
        refused(rootdir, "run", "--memory-swap", "128m", "bb", "true")
        == "Error: You should always set the Memory limit when using Memoryswap limit, see usage"
    )
    assert (
        refused(rootdir, "run", "-m", "64m", "--memory-swap", "32m", "bb", "true")
        == "Error: Minimum memoryswap limit should be larger than memory limit, see usage"
    )


def test_ulimit_sets_soft_and_hard_limits(rootdir):
    out = strata(
        rootdir,
        "run",
        "--rm",
        "--ulimit",
        "nofile=100:200",
        "--ulimit",
        "core=infinity",
        "bb",
        "sh",
        "-c",
        "ulimit -n; ulimit -Hn; ulimit -c",
    ).out.split()
    assert out == ["100", "200", "unlimited"]
    cid = strata(rootdir, "create", "--ulimit", "nproc=50", "bb", "true").out.strip()
    assert inspect(rootdir, "{{json .HostConfig.Ulimits}}", cid) == '[{"Hard":50,"Name":"nproc","Soft":50}]'
    assert refused(rootdir, "run", "--ulimit", "bogus=1", "bb", "true").startswith(
        'strata: invalid argument "bogus=1" for "--ulimit" flag: invalid ulimit type: bogus'
    )
    assert refused(rootdir, "run", "--ulimit", "nofile=3:2", "bb", "true").startswith(
        'strata: invalid argument "nofile=3:2" for "--ulimit" flag: ulimit soft limit must be less than or equal to '
        "hard limit: 3 > 2"
    )


# -- names ------------------------------------------------------------------------------------------
def test_add_host_and_dns_write_the_containers_files(rootdir):
    out = strata(
        rootdir,
        "run",
        "--rm",
        "--add-host",
        "db:10.1.2.3",
        "--add-host",
        "gw=host-gateway",
        "--dns",
        "9.9.9.9",
        "--dns",
        "1.1.1.1",
        "bb",
        "sh",
        "-c",
        "grep -E 'db|gw|host.containers' /etc/hosts; grep nameserver /etc/resolv.conf",
    ).out.splitlines()
    host = next(line.split()[0] for line in out if "host.containers.internal" in line)
    assert "10.1.2.3\tdb" in out and f"{host}\tgw" in out
    assert out[-2:] == ["nameserver 9.9.9.9", "nameserver 1.1.1.1"]
    assert refused(rootdir, "run", "--add-host", "db:nowhere", "bb", "true").startswith(
        'strata: invalid argument "db:nowhere" for "--add-host" flag: invalid IP address in add-host: "nowhere"'
    )
    assert refused(rootdir, "run", "--dns", "1.2.3", "bb", "true").startswith(
        'strata: invalid argument "1.2.3" for "--dns" flag: IP address is not correctly formatted: 1.2.3'
    )


# -- the end ------------------------------------------------------------------------------------------
def test_stop_signal_and_stop_timeout_are_what_stop_uses(rootdir):
    strata(
        rootdir,
        "run",
        "-d",
        "--name",
        "usr1",
        "--stop-signal",
        "SIGUSR1",
        "bb",
        "sh",
        "-c",
        "trap 'exit 5' USR1; echo trapped; while :; do sleep 1; done",
    )
    # run -d returns once PID 1 exec'd sh, maybe before its trap: a signal that finds SIG_DFL is one the
    # kernel drops for a PID namespace's init (stop would wait its 10 s and SIGKILL: 137)
    wait_for(lambda: strata(rootdir, "logs", "usr1").out == "trapped\n", what="the USR1 trap")
    strata(rootdir, "stop", "usr1")
    assert inspect(rootdir, "{{.State.ExitCode}} {{.Config.StopSignal}}", "usr1") == "5 SIGUSR1"
    strata(rootdir, "run", "-d", "--name", "slow", "--stop-timeout", "1", "bb", "sleep", "300")
    began = time.monotonic()
    strata(rootdir, "stop", "slow")  # sleep as PID 1 ignores SIGTERM: killed after 1 s, not 10
    assert time.monotonic() - began < 8
    assert inspect(rootdir, "{{.State.ExitCode}} {{.Config.StopTimeout}}", "slow") == "137 1"
    strata(
        rootdir,
        "run",
        "-d",
        "--name",
        "sig",
        "bb",
        "sh",
        "-c",
        "trap 'exit 9' HUP; echo trapped; while :; do sleep 1; done",
    )
    wait_for(lambda: strata(rootdir, "logs", "sig").out == "trapped\n", what="the HUP trap")
    strata(rootdir, "stop", "-s", "HUP", "sig")
    assert inspect(rootdir, "{{.State.ExitCode}}", "sig") == "9"
    assert refused(rootdir, "run", "--stop-signal", "NOPE", "bb", "true") == "Error: Invalid signal: NOPE"


def test_restart_on_failure_restarts_up_to_its_count(rootdir):
    strata(
        rootdir,
        "run",
        "-d",
        "--name",
        "flaky",
        "--restart",
        "on-failure:2",
        "bb",
        "sh",
        "-c",
        "echo run >> /runs; wc -l < /runs; exit 3",
    )
    assert strata(rootdir, "wait", "flaky").out == "3\n"  # waits through the restarts
    assert (
        inspect(rootdir, "{{.RestartCount}} {{.State.Status}} {{json .HostConfig.RestartPolicy}}", "flaky")
        == '2 exited {"MaximumRetryCount":2,"Name":"on-failure"}'
    )
    assert strata(rootdir, "logs", "flaky").out.split() == ["1", "2", "3"]  # one writable layer, three runs
    strata(rootdir, "run", "-d", "--name", "fine", "--restart", "on-failure", "bb", "true")
    assert strata(rootdir, "wait", "fine").out == "0\n" and inspect(rootdir, "{{.RestartCount}}", "fine") == "0"


def test_restart_always_goes_on_until_stopped(rootdir):
    strata(rootdir, "run", "-d", "--name", "again", "--restart", "always", "bb", "sh", "-c", "echo up; exit 0")
    wait_for(lambda: int(inspect(rootdir, "{{.RestartCount}}", "again")) >= 2, what="two restarts")
    strata(rootdir, "stop", "again")
    state = inspect(rootdir, "{{.State.Status}} {{.State.Running}}", "again")
    assert state == "exited false"
    assert strata(rootdir, "ps", "-a", "-f", "status=restarting", "-q").out == ""
    # its supervisor is gone: nothing is left to start it again
    cid = inspect(rootdir, "{{.Id}}", "again")
    with open(os.path.join(rootdir, "containers", cid, "state.json")) as f:
        supervisor = json.load(f)["SupervisorPid"]
    # stop returns once the container exited: its supervisor may still be unmounting; it ends, bounded
    assert _ends(supervisor), f"the supervisor {supervisor} still runs"
    strata(rootdir, "start", "again")  # a start by hand: its policy again, until rm -f
    wait_for(lambda: int(inspect(rootdir, "{{.RestartCount}}", "again")) >= 1, what="a restart after start")
    strata(rootdir, "rm", "-f", "again")
    assert strata(rootdir, "ps", "-aq").out.count("\n") == 0


def test_a_foreground_run_with_a_restart_policy_returns_the_first_exit(rootdir):
    res = strata(
        rootdir, "run", "--name", "fg", "--restart", "on-failure:1", "bb", "sh", "-c", "echo out; exit 4", check=False
    )
    assert (res.code, res.out) == (4, "out\n")
    assert strata(rootdir, "wait", "fg").out == "4\n" and inspect(rootdir, "{{.RestartCount}}", "fg") == "1"


def test_bad_restart_policies_are_refused(rootdir):
    assert (
        refused(rootdir, "run", "--rm", "--restart", "always", "bb", "true")
        == "Error: Conflicting options: --restart and --rm"
    )
    assert refused(rootdir, "run", "--restart", "sometimes", "bb", "true") == (
        "Error: invalid restart policy: unknown policy 'sometimes'; use one of 'no', 'always', 'on-failure', or "
        "'unless-stopped'"
    )
    assert (
        refused(rootdir, "run", "--restart", "always:3", "bb", "true")
        == "Error: invalid restart policy: maximum retry count can only be used with 'on-failure'"
    )
    assert (
        refused(rootdir, "run", "--restart", "on-failure:x", "bb", "true")
        == "Error: invalid restart policy format: maximum retry count must be an integer"
    )
