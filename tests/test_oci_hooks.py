# ruff: noqa: F401, F811 (test_oci_runtime's fixtures, imported: pytest passes them by these names)
"""runtime-spec hooks run by strata-oci at their points: real hook programs (a Python script on the
host, a busybox script in the container's root) append what they see to a log: the state on stdin,
their namespaces, their argv[0] and environment, and PID 1 as the host sees it at that moment (its
root: pivoted yet? its mounts: made yet? its exe: exec'd yet?). Failures and timeouts end the
operation as the spec says; nothing is left behind (the ``root`` fixture kills and removes by pid
and exact path whatever a test left)."""

from __future__ import annotations

import json
import os
import signal
import sys

from test_oci_runtime import CGROUP_PARENT, _cgroup_dirs, _conmon, _reaped, bundle, oci, root, state

from runner.process import process_alive

HOST_HOOK = r"""
import json, os, sys
st = json.load(sys.stdin)
pid = st.get("pid")

def where(path):  # (dev, inode): readlink says "/" for a root pivoted in another mount namespace
    try:
        st = os.stat(path)
    except OSError as e:  # (PID 1 gone already: a quick command's poststart)
        return f"error {e.errno}"
    return [st.st_dev, st.st_ino]

def mounts(pid):
    try:
        return open(f"/proc/{pid}/mountinfo").read()
    except OSError as e:
        return f"error {e.errno}"

def link(path):
    try:
        return os.readlink(path)
    except OSError as e:
        return f"error {e.errno}"

record = {"kind": sys.argv[1], "argv0": sys.orig_argv[0], "env": dict(os.environ), "state": st,
          "mnt": link("/proc/self/ns/mnt"), "net": link("/proc/self/ns/net"), "pidns": link("/proc/self/ns/pid"),
          "pid1_root": where(f"/proc/{pid}/root/") if pid else None,
          "pid1_exe": link(f"/proc/{pid}/exe") if pid else None,
          "pid1_mounts": mounts(pid) if pid else "",
          "state_dir_exists": os.path.exists(os.environ["HOOK_STATE_DIR"])}
with open(os.environ["HOOK_LOG"], "a") as f:
    f.write(json.dumps(record) + "\n")
sys.exit(int(os.environ.get("HOOK_EXIT", "0")))
"""

# in the container's root, run as its process would be: what it sees from inside, before the command
CONTAINER_HOOK = """#!/bin/sh
echo "$(cat) mnt=$(readlink /proc/self/ns/mnt) payload=$(cat /tmp/payload 2>/dev/null) uid=$(id -u)" >> /hooks.log
exit ${HOOK_EXIT:-0}
"""


def _setup(
    tmp_path, root_dir: str, kinds: dict[str, dict[str, str]], cid: str = "h1", timeout: dict[str, int] | None = None
) -> tuple[dict, str]:
    """A config's hooks: each kind in ``kinds`` runs the host script (startContainer: the container's
    script), with the extra environment given; returns (hooks, the host script's log)."""
    script = tmp_path / "hook.py"
    script.write_text(HOST_HOOK)
    log = str(tmp_path / "hooks.log")
    hooks: dict[str, list] = {}
    for kind, extra in kinds.items():
        env = [
            f"HOOK_LOG={log}",
            f"HOOK_STATE_DIR={os.path.join(root_dir, cid)}",
            "LC_ALL=C.UTF-8",
            *(f"{k}={v}" for k, v in extra.items()),
        ]
        if kind == "startContainer":
            hook = {"path": "/hooks/start.sh", "env": env}
        else:
            hook = {"path": sys.executable, "args": ["hook-argv0", str(script), kind], "env": env}
        if timeout and kind in timeout:
            hook["timeout"] = timeout[kind]
        hooks[kind] = [hook]
    return hooks, log


def _container_hook(busybox_rootfs: str) -> str:
    os.makedirs(os.path.join(busybox_rootfs, "hooks"), exist_ok=True)
    path = os.path.join(busybox_rootfs, "hooks", "start.sh")
    with open(path, "w") as f:
        f.write(CONTAINER_HOOK)
    os.chmod(path, 0o755)
    for applet in ("id", "readlink"):
        if not os.path.exists(os.path.join(busybox_rootfs, "bin", applet)):
            os.symlink("busybox", os.path.join(busybox_rootfs, "bin", applet))
    return os.path.join(busybox_rootfs, "hooks.log")


def _records(log: str) -> list[dict]:
    if not os.path.exists(log):
        return []
    with open(log) as f:
        return [json.loads(line) for line in f]


def test_each_hook_runs_at_its_point_in_its_namespaces_with_the_state(tmp_path, root, bundle, busybox_rootfs):
    kinds = {k: {} for k in ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")}
    hooks, log = _setup(tmp_path, root, kinds)
    inside_log = _container_hook(busybox_rootfs)
    b = bundle(
        ["sh", "-c", "echo ran > /tmp/payload; sleep 100"],
        cid="h1",
        hooks=hooks,
        annotations={"org.example.key": "value"},
    )
    rootfs = os.path.realpath(os.path.join(b, "rootfs"))
    host = {name: os.readlink(f"/proc/self/ns/{name}") for name in ("mnt", "net", "pid")}
    host_root, pivoted = ([os.stat(p).st_dev, os.stat(p).st_ino] for p in ("/", rootfs))

    conmon, pid, _ = _conmon(tmp_path, root, b, "h1")
    try:
        pid1 = {name: os.readlink(f"/proc/{pid}/ns/{name}") for name in ("mnt", "net", "pid")}
        seen = _records(log)
        assert [r["kind"] for r in seen] == ["prestart", "createRuntime", "createContainer"]
        for r in seen:
            assert r["state"] == {
                "ociVersion": r["state"]["ociVersion"],
                "id": "h1",
                "status": "creating",
                "pid": pid,
                "bundle": b,
                "annotations": {"org.example.key": "value"},
            }
            assert r["argv0"] == "hook-argv0"  # args[0] is argv[0]; the environment is the hook's alone
            assert r["env"]["HOOK_LOG"] == log and "PATH" not in r["env"]
            assert r["pid1_root"] == host_root  # before pivot_root ...
            assert f" {rootfs}/proc " in r["pid1_mounts"]  # ... with the container's mounts made
        for r in seen[:2]:  # prestart, createRuntime: the runtime's namespaces
            assert (r["mnt"], r["net"], r["pidns"]) == (host["mnt"], host["net"], host["pid"])
        cc = seen[2]  # createContainer: PID 1's (its path on the host: this script is not in the rootfs)
        assert (cc["mnt"], cc["net"], cc["pidns"]) == (pid1["mnt"], pid1["net"], pid1["pid"])
        assert pid1["mnt"] != host["mnt"]
        assert not os.path.exists(inside_log)  # startContainer: not in create

        oci(root, "start", "h1", check=True)
        with open(inside_log) as f:  # in the container (its path there), before the command ran
            line = f.read().strip()
        st_json, _, rest = line.partition(" mnt=")
        st = json.loads(st_json)
        assert st["status"] == "created" and st["pid"] == pid and st["id"] == "h1"
        assert rest == f"{pid1['mnt']} payload= uid=0"
        seen = _records(log)
        assert [r["kind"] for r in seen][3:] == ["poststart"]
        post = seen[3]
        assert post["state"]["status"] == "running" and post["state"]["pid"] == pid
        assert (post["mnt"], post["net"]) == (host["mnt"], host["net"])
        assert post["pid1_exe"].endswith("/bin/busybox")  # after the exec (start waits for it)
        assert post["pid1_root"] == pivoted

        oci(root, "kill", "h1", "KILL", check=True)
        assert _reaped(conmon) == -signal.SIGKILL
        oci(root, "delete", "h1", check=True)
        stop = _records(log)[4]
        assert stop["kind"] == "poststop" and stop["state"]["status"] == "stopped" and "pid" not in stop["state"]
        assert stop["state_dir_exists"] is False  # after the container is deleted
        assert len(_records(log)) == 5
    finally:
        if conmon.poll() is None:
            os.kill(pid, signal.SIGKILL)
            conmon.wait(timeout=30)


def _failed_create_leaves_nothing(root: str, cid: str) -> None:
    assert not os.path.isdir(root) or os.listdir(root) == []
    assert _cgroup_dirs(f"{CGROUP_PARENT}/{cid}") == []


def test_a_failing_create_time_hook_fails_create_and_poststop_undoes_it(tmp_path, root, bundle, busybox_rootfs):
    for failing in ("prestart", "createRuntime", "createContainer"):
        kinds: dict[str, dict[str, str]] = {"prestart": {}, "createRuntime": {}, "createContainer": {}, "poststop": {}}
        kinds[failing] = {"HOOK_EXIT": "3"}
        hooks, log = _setup(tmp_path, root, kinds, cid="f1")
        b = bundle(["sh", "-c", "echo ran > /tmp/payload"], cid="f1", hooks=hooks)
        res = oci(root, "create", "--bundle", b, "f1")
        assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
        assert f"{failing} hook #0 ({sys.executable}): exit status 3" in res.stderr
        ran = [r["kind"] for r in _records(log)]
        order = ["prestart", "createRuntime", "createContainer"]
        assert ran == order[: order.index(failing) + 1] + ["poststop"]  # none after the failing one
        pid = _records(log)[0]["state"]["pid"]
        assert not process_alive(pid, None)
        _failed_create_leaves_nothing(root, "f1")
        assert not os.path.exists(os.path.join(busybox_rootfs, "tmp", "payload"))
        os.unlink(log)


def test_a_hook_past_its_timeout_is_killed_and_fails_create(tmp_path, root, bundle):
    sleeper = tmp_path / "sleeper.sh"
    sleeper.write_text(f"#!/bin/sh\necho $$ > {tmp_path}/sleeper.pid\necho still here\nexec /bin/sleep 100\n")
    sleeper.chmod(0o755)
    hooks = {"createRuntime": [{"path": str(sleeper), "timeout": 1}]}
    res = oci(root, "create", "--bundle", bundle(["true"], cid="t1", hooks=hooks), "t1")
    assert res.returncode == 1 and res.stderr.count("\n") == 1
    assert f"createRuntime hook #0 ({sleeper}): timed out after 1 s: still here" in res.stderr
    assert not process_alive(int((tmp_path / "sleeper.pid").read_text()), None)
    _failed_create_leaves_nothing(root, "t1")
    missing = {"createRuntime": [{"path": "/nonexistent/hook"}]}
    res = oci(root, "create", "--bundle", bundle(["true"], cid="t2", hooks=missing), "t2")
    assert res.returncode == 1 and res.stderr.count("\n") == 1
    assert (
        "createRuntime hook #0 (/nonexistent/hook): exit status 127: exec /nonexistent/hook: No such file" in res.stderr
    )
    _failed_create_leaves_nothing(root, "t2")


def test_a_failing_start_container_hook_fails_start_and_the_command_never_runs(tmp_path, root, bundle, busybox_rootfs):
    hooks, log = _setup(tmp_path, root, {"startContainer": {"HOOK_EXIT": "4"}, "poststart": {}}, cid="s1")
    inside_log = _container_hook(busybox_rootfs)
    conmon, pid, _ = _conmon(
        tmp_path, root, bundle(["sh", "-c", "echo ran > /tmp/payload"], cid="s1", hooks=hooks), "s1"
    )
    try:
        res = oci(root, "start", "s1")
        assert res.returncode == 1 and res.stderr.count("\n") == 1
        assert "startContainer hook #0 (/hooks/start.sh): exit status 4" in res.stderr
        assert _reaped(conmon) == 125  # PID 1 stopped, as the spec asks
        assert state(root, "s1")["status"] == "stopped"
        assert not os.path.exists(os.path.join(busybox_rootfs, "tmp", "payload"))
        assert os.path.exists(inside_log) and _records(log) == []  # it ran; poststart did not
        oci(root, "delete", "s1", check=True)
    finally:
        if conmon.poll() is None:
            os.kill(pid, signal.SIGKILL)
            conmon.wait(timeout=30)


def test_poststart_and_poststop_failures_are_warnings(tmp_path, root, bundle):
    hooks, log = _setup(tmp_path, root, {"poststart": {"HOOK_EXIT": "5"}, "poststop": {"HOOK_EXIT": "6"}}, cid="w1")
    hooks["poststop"].append(
        {**hooks["poststop"][0], "env": [e for e in hooks["poststop"][0]["env"] if not e.startswith("HOOK_EXIT")]}
    )
    runtime_log = str(tmp_path / "runtime.log")
    res = oci(
        root,
        "--log",
        runtime_log,
        "--log-format",
        "json",
        "run",
        "--bundle",
        bundle(["sh", "-c", "exit 2"], cid="w1", hooks=hooks),
        "w1",
    )
    assert res.returncode == 2  # the container's code: the hooks' failures changed nothing
    warnings = [json.loads(line) for line in open(runtime_log)]
    assert [(w["level"], w["msg"].split(":")[0]) for w in warnings] == [
        ("warning", f"poststart hook #0 ({sys.executable})"),
        ("warning", f"poststop hook #0 ({sys.executable})"),
    ]
    assert warnings[0]["msg"].endswith("exit status 5") and warnings[1]["msg"].endswith("exit status 6")
    assert [r["kind"] for r in _records(log)] == ["poststart", "poststop", "poststop"]  # the rest still ran
    assert os.listdir(root) == []


def test_features_lists_the_hooks(root):
    assert json.loads(oci(root, "features", check=True).stdout)["hooks"] == [
        "prestart",
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "poststop",
    ]
