"""What each call an engine makes of its OCI runtime costs, strata-oci side by side with runc in one
run, on one prepared bundle (busybox-static's ``true``, Docker's default seccomp profile): the calls podman 4.3 and conmon make for
``podman run --rm IMAGE true`` (``create``, ``start``, ``delete --force``), and the others engines
make (``state``, ``kill``, ``features``).

This process is the subreaper conmon is: ``create`` leaves PID 1 to it, it waits for PID 1's end
itself. Each round: create, state (created), start, wait for PID 1, state (stopped), delete; then
create, kill KILL, delete; then features. The runtimes alternate, round by round, after a warm-up
round each. strata-oci is the launcher of this venv (what pip installs); ``--oci NAME=PATH`` (again
for more) names others to put beside it, an older build say.

Usage: ``python bench/oci_verbs.py [--runs 20] [--oci NAME=PATH ...]`` as root.
"""

from __future__ import annotations

import argparse
import compileall
import ctypes
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from runner import seccomp  # noqa: E402
from runner.oci import spec  # noqa: E402

VERBS = ["create", "state created", "start", "state stopped", "delete", "kill", "delete created", "features"]
CGROUP_PARENT = f"oci-verbs-{os.getpid()}"


def _rootfs(work: str) -> str:
    rootfs = os.path.join(work, "rootfs")
    busybox = shutil.which("busybox")
    if busybox is None:
        sys.exit("bench: busybox-static is needed")
    for d in ("bin", "etc", "tmp", "proc", "sys", "dev"):
        os.makedirs(os.path.join(rootfs, d))
    shutil.copy(busybox, os.path.join(rootfs, "bin", "busybox"))
    os.symlink("busybox", os.path.join(rootfs, "bin", "true"))
    return rootfs


def _bundle(work: str, name: str, rootfs: str) -> str:
    bundle = os.path.join(work, name)
    os.mkdir(bundle)
    config = spec.default_config()
    config["root"]["path"] = rootfs  # (runc takes no symlink there)
    config["process"].update(args=["/bin/true"], terminal=False)
    config["linux"]["cgroupsPath"] = f"/{CGROUP_PARENT}/{name}"
    # Docker's default profile, as podman's bundles and strata run's have one (runc spec's has none)
    config["linux"]["seccomp"] = seccomp.resolve(seccomp.load_profile(None), set(spec.DEFAULT_CAPS))
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(config, f)
    return bundle


def _timed(command: list[str], output: bool = True) -> tuple[float, str]:
    """Run one call; ``output``: read its stdout (not for create: PID 1 keeps create's stdio, as
    conmon's files)."""
    start = time.perf_counter()
    res = subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if output else subprocess.DEVNULL,
        stderr=subprocess.PIPE if output else subprocess.DEVNULL,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if res.returncode:
        raise SystemExit(f"bench: {' '.join(command)} failed: {res.stderr or ''}".strip())
    return elapsed, res.stdout or ""


def _wait_exit(pid: int) -> None:
    pidfd = os.pidfd_open(pid)
    try:
        select.select([pidfd], [], [], 30)
    finally:
        os.close(pidfd)
    os.waitpid(pid, 0)


def one_round(program: str, root: str, bundle: str, n: int) -> dict[str, float]:
    base = [program, "--root", root]
    cid = f"c{n}"
    pid_file = os.path.join(root, f"{cid}.pid")
    t: dict[str, float] = {}
    t["create"], _ = _timed([*base, "create", "--bundle", bundle, "--pid-file", pid_file, cid], output=False)
    with open(pid_file) as f:
        pid = int(f.read())
    t["state created"], out = _timed([*base, "state", cid])
    assert json.loads(out)["status"] == "created", out
    t["start"], _ = _timed([*base, "start", cid])
    _wait_exit(pid)
    t["state stopped"], out = _timed([*base, "state", cid])
    assert json.loads(out)["status"] == "stopped", out
    t["delete"], _ = _timed([*base, "delete", "--force", cid])
    cid = f"k{n}"
    _timed([*base, "create", "--bundle", bundle, "--pid-file", pid_file, cid], output=False)
    with open(pid_file) as f:
        pid = int(f.read())
    t["kill"], _ = _timed([*base, "kill", cid, "KILL"])
    _wait_exit(pid)
    t["delete created"], _ = _timed([*base, "delete", "--force", cid])
    t["features"], _ = _timed([*base, "features"])
    return t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--oci", action="append", default=[], metavar="NAME=PATH")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root")
    runc = shutil.which("runc")
    if runc is None:
        sys.exit("bench: runc is not installed (make bench installs it)")
    compileall.compile_dir(os.path.join(REPO, "runner"), quiet=1)  # as an installed package has it
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: PID 1s come to us, as to conmon
    work = tempfile.mkdtemp(prefix="oci-verbs-", dir="/tmp")
    runtimes = {
        "strata-oci": os.path.join(os.path.dirname(sys.executable), "strata-oci"),
        **dict(o.split("=", 1) for o in args.oci),
        "runc": runc,
    }
    times: dict[str, dict[str, list[float]]] = {r: {v: [] for v in VERBS} for r in runtimes}
    roots = {name: os.path.join(work, f"state-{name}") for name in runtimes}
    try:
        rootfs = _rootfs(work)
        bundles = {name: _bundle(work, f"b{i}", rootfs) for i, name in enumerate(runtimes)}
        for n in range(args.runs + 1):
            for (name, program), bundle in zip(runtimes.items(), bundles.values(), strict=True):
                t = one_round(program, roots[name], bundle, n)
                if n:
                    for verb, value in t.items():
                        times[name][verb].append(value)
    finally:
        for name, program in runtimes.items():  # what a failed round left, by its runtime
            for cid in os.listdir(roots[name]) if os.path.isdir(roots[name]) else []:
                if not cid.endswith(".pid"):
                    subprocess.run([program, "--root", roots[name], "delete", "--force", cid], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
        for controller in os.listdir("/sys/fs/cgroup"):
            path = os.path.join("/sys/fs/cgroup", controller, CGROUP_PARENT)
            if os.path.isdir(path):
                for child in os.listdir(path):
                    if os.path.isdir(os.path.join(path, child)):
                        os.rmdir(os.path.join(path, child))
                os.rmdir(path)
    names = list(runtimes)
    print(f"OCI runtime calls, {args.runs} rounds, interleaved; medians in ms, and x runc")
    print(f"{'':<16}" + "".join(f"{name:>22}" for name in names))
    total = {name: 0.0 for name in runtimes}
    for verb in VERBS + ["podman run:3"]:
        if verb in VERBS:
            m = {name: statistics.median(times[name][verb]) for name in names}
            if verb in ("create", "start", "delete"):
                for name in names:
                    total[name] += m[name]
        else:
            m = total  # (create + start + delete: the calls of podman run --rm)
        print(f"{verb:<16}" + "".join(f"{m[n] * 1000:>14.1f} {m[n] / m['runc']:>6.2f}x" for n in names))


if __name__ == "__main__":
    main()
