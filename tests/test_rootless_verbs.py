"""Issue 19's run flags and verbs as an ordinary user (the session's throwaway user: tests/
rootless_support.py): what a user namespace allows works as for root; what needs a cgroup the user
has not been given (pause, limits) says so in one line."""

from __future__ import annotations

import json
import os

from helpers import wait_for
from test_rootless import IMAGE, rootfs, scratch, store  # noqa: F401 (fixtures)


def test_rootless_run_flags(rootless, store, scratch):  # noqa: F811
    env = os.path.join(scratch, "app.env")
    with open(env, "w") as f:
        f.write("# comment\nFROM_FILE=yes\n")
    rootless.give(env)
    out = rootless.strata(
        store,
        "run",
        "--rm",
        "--env-file",
        env,
        "--init",
        "--ulimit",
        "nofile=64:128",
        "--add-host",
        "db:10.9.8.7",
        "--dns",
        "9.9.9.9",
        "--cap-drop",
        "ALL",
        "--cap-add",
        "CHOWN",
        "--entrypoint",
        "sh",
        IMAGE,
        "-c",
        "echo $FROM_FILE; cat /proc/1/comm; ulimit -n; grep -w db /etc/hosts; grep nameserver "
        "/etc/resolv.conf; grep CapEff /proc/self/status",
    ).out.splitlines()
    assert out[:3] == ["yes", "strata-init", "64"]
    assert out[3] == "10.9.8.7\tdb" and out[4] == "nameserver 9.9.9.9"
    assert out[5].split()[1] == "0000000000000001"  # CHOWN alone
    out = rootless.strata(
        store, "run", "--rm", "--privileged", IMAGE, "grep", "-E", "^(CapEff|Seccomp):", "/proc/self/status"
    ).out.split()
    assert out[3] == "0" and int(out[1], 16) & (1 << 21)  # no filter, and CAP_SYS_ADMIN (in its namespace)
    cid = rootless.strata(store, "create", "--pids-limit", "10", "--cpus", "0.5", IMAGE, "true").out
    delegated = rootless.strata(store, "inspect", "-f", "{{.HostConfig.CgroupVersion}}", cid.strip()).out != "0\n"
    res = rootless.strata(store, "run", "--rm", "--pids-limit", "10", "--cpus", "0.5", IMAGE, "true")
    if not delegated:  # said once, then run without them (as -m)
        assert res.err.count("\n") == 1 and res.err.startswith("WARNING: no cgroup is delegated to you: --cpus")
    else:
        assert res.err == ""


def test_rootless_restart_stop_signal_and_events(rootless, store):  # noqa: F811
    rootless.strata(store, "run", "-d", "--name", "flaky", "--restart", "on-failure:1", IMAGE, "sh", "-c", "exit 2")
    assert rootless.strata(store, "wait", "flaky").out == "2\n"
    assert rootless.strata(store, "inspect", "-f", "{{.RestartCount}}", "flaky").out == "1\n"
    rootless.strata(
        store,
        "run",
        "-d",
        "--name",
        "usr1",
        "--stop-signal",
        "USR1",
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 5' USR1; echo trapped; while true; do sleep 1; done",
    )
    # run -d returns once PID 1 exec'd sh, maybe before its trap: a signal that finds SIG_DFL is one the
    # kernel drops for a PID namespace's init (stop would wait its 10 s and SIGKILL: 137)
    wait_for(lambda: rootless.strata(store, "logs", "usr1").out == "trapped\n", what="the USR1 trap")
    rootless.strata(store, "stop", "usr1")
    assert rootless.strata(store, "inspect", "-f", "{{.State.ExitCode}}", "usr1").out == "5\n"
    events = [
        json.loads(line)["Action"]
        for line in rootless.strata(
            store, "events", "--since", "5m", "--until", "0s", "--format", "json", "-f", "container=usr1"
        ).out.splitlines()
    ]
    assert events[:2] == ["create", "start"] and events[-2:] == ["die", "stop"]


def test_rootless_verbs(rootless, store, scratch):  # noqa: F811
    rootless.strata(store, "create", "--name", "made", IMAGE, "sleep", "300")
    rootless.strata(store, "rename", "made", "box")
    rootless.strata(store, "start", "box")
    res = rootless.strata(store, "pause", "box", check=False)
    if rootless.strata(store, "inspect", "-f", "{{.HostConfig.CgroupVersion}}", "box").out == "0\n":
        assert (res.code, res.err) == (
            1,
            "Error: this rootless host delegates no cgroup to you: cannot pause the container\n",
        )
    else:  # a delegated cgroup v2 subtree: its freezer
        assert res.code == 0 and rootless.strata(store, "inspect", "-f", "{{.State.Paused}}", "box").out == "true\n"
        rootless.strata(store, "unpause", "box")
    local = os.path.join(scratch, "in.txt")
    with open(local, "w") as f:
        f.write("copied in\n")
    rootless.give(local)
    rootless.strata(store, "cp", local, "box:/tmp/")
    assert rootless.strata(store, "exec", "box", "cat", "/tmp/in.txt").out == "copied in\n"
    back = os.path.join(scratch, "back")
    rootless.strata(store, "cp", "box:/tmp/in.txt", back)
    with open(back) as f:
        assert f.read() == "copied in\n"
    assert os.stat(back).st_uid == rootless.uid
    row = json.loads(rootless.strata(store, "stats", "--no-stream", "--format", "json", "box").out)
    assert row["Name"] == "box" and int(row["PIDs"]) >= 1
    rootless.strata(store, "exec", "box", "sh", "-c", "echo theirs > /tmp/owned && chown 100:101 /tmp/owned")
    rootless.strata(store, "stop", "-t", "0", "box")
    # stopped: its union is mounted in a user namespace mapped as the container's, for the copy
    rootless.strata(store, "cp", local, "box:/tmp/again.txt")
    rootless.strata(store, "cp", "box:/tmp/owned", os.path.join(scratch, "owned"))
    with open(os.path.join(scratch, "owned")) as f:
        assert f.read() == "theirs\n"
    rootless.strata(store, "start", "box")
    assert (
        rootless.strata(
            store, "exec", "box", "sh", "-c", "cat /tmp/again.txt; stat -c %u:%g /tmp/again.txt /tmp/owned"
        ).out
        == "copied in\n0:0\n100:101\n"
    )
    rootless.strata(store, "stop", "-t", "0", "box")
    out = rootless.strata(store, "container", "prune", "-f").out
    assert out.startswith("Deleted Containers:\n")
    assert rootless.strata(store, "ps", "-aq").out == ""
    assert rootless.strata(store, "system", "df").out.splitlines()[2].split()[:3] == ["Containers", "0", "0"]
