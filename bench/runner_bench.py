"""Container start-up, side by side in one run with crun and bubblewrap on the same busybox rootfs,
plus what 20 running containers from one image cost in disk and memory.

  strata run --rm IMAGE /bin/true      (union mount + namespaces + cgroup + supervisor, end to end),
                                       the installed ``strata``: through its warm zygote
  ... STRATA_NO_ZYGOTE=1               the same, run in the client's own process (a cold start)
  crun run -b BUNDLE ID                (an OCI bundle whose rootfs is the same busybox tree)
  strata-oci run -b BUNDLE ID          (strata's OCI runtime on that bundle: what podman, containerd
                                        and CRI-O run; a cold Python process per call)
  runc run -b BUNDLE ID                (runc on that bundle)
  bwrap --bind ROOTFS / ... /bin/true  (namespaces only)

The sides are interleaved, so each start is an isolated one: it pays the RCU grace period that a
cgroup move waits for when none happened just before. Started back to back (as hyperfine does),
crun skips most of that: 17 ms against 33 ms here with a 0.1 s pause between runs.

crun refuses a cgroup v1 "hybrid" host (a cgroup2 mount with controllers beside the v1 ones). On such
a host the bench runs in a mount namespace of its own in which that cgroup2 mount is gone, so crun
uses the v1 controllers, as strata does.

Usage: ``python bench/runner_bench.py [--runs 10]`` as root.
"""

from __future__ import annotations

import argparse
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
_SCRIPT = os.path.join(os.path.dirname(sys.executable), "strata")  # what users run, in the venv
STRATA = [_SCRIPT] if os.path.exists(_SCRIPT) else [sys.executable, "-m", "runner"]
ENV = {**os.environ, "PYTHONPATH": REPO}
ENV.pop("PYTHONDONTWRITEBYTECODE", None)  # users' runs have their bytecode cached


def hide_hybrid_cgroup2() -> bool:
    """On a v1 hybrid host, leave the cgroup2 mount out of a private mount namespace (see above):
    re-run this script under ``unshare -m``, which unmounts it there."""
    unified = "/sys/fs/cgroup/unified"
    with open("/proc/self/mounts") as f:
        if not any(line.split()[1] == unified and line.split()[2] == "cgroup2" for line in f):
            return False
    if os.environ.get("RUNNER_BENCH_PRIVATE") != "1":
        os.execvpe(
            "unshare",
            ["unshare", "-m", "--propagation", "private", sys.executable, *sys.argv],
            {**os.environ, "RUNNER_BENCH_PRIVATE": "1"},
        )
    subprocess.run(["umount", "-l", unified], check=True)
    return True


def stop_zygote(directory: str) -> None:
    try:
        with open(os.path.join(directory, "zygote.pid")) as f:
            pid = int(f.read())
        pidfd = os.pidfd_open(pid)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return
    os.kill(pid, 15)
    select.select([pidfd], [], [], 30)
    os.close(pidfd)


def busybox_rootfs(path: str) -> None:
    for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "root"):
        os.makedirs(os.path.join(path, d))
    busybox = shutil.which("busybox") or sys.exit("bench: busybox-static is not installed")
    shutil.copy(busybox, os.path.join(path, "bin", "busybox"))
    for applet in ("true", "sh", "sleep"):
        os.symlink("busybox", os.path.join(path, "bin", applet))


def timed(cmd: list[str], env: dict[str, str] = ENV) -> float:
    """Wall time of one run, spawned as directly as Python can (posix_spawn, output to /dev/null),
    the same way for every side. A side that fails stops the bench with its stderr."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    err = tempfile.TemporaryFile()
    try:
        actions = [(os.POSIX_SPAWN_DUP2, devnull, 1), (os.POSIX_SPAWN_DUP2, err.fileno(), 2)]
        start = time.perf_counter()
        pid = os.posix_spawnp(cmd[0], cmd, env, file_actions=actions)
        _, status = os.waitpid(pid, 0)
        elapsed = time.perf_counter() - start
    finally:
        os.close(devnull)
    if os.waitstatus_to_exitcode(status) != 0:
        err.seek(0)
        sys.exit(f"bench: {' '.join(cmd)} failed: {err.read().decode(errors='replace').strip()}")
    err.close()
    return elapsed


def memory_kib(pid: int, field: str) -> int:
    """``Rss`` counts pages shared with other processes in full; ``Pss`` splits them among the sharers."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return int(next(line.split()[1] for line in f if line.startswith(field + ":")))


def du(path: str) -> int:
    out = subprocess.run(["du", "-s", "-x", "-B1", path], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: containers need root")
    if hide_hybrid_cgroup2():
        print("v1 hybrid host: running in a mount namespace without the cgroup2 mount, so that crun can run")
    work = tempfile.mkdtemp(prefix="rbench-")
    zygote = os.path.join(work, "zygote")
    os.mkdir(zygote, 0o700)
    ENV["STRATA_ZYGOTE_DIR"] = zygote
    cold = {**ENV, "STRATA_NO_ZYGOTE": "1"}
    try:
        rootfs = os.path.join(work, "bundle", "rootfs")
        busybox_rootfs(rootfs)
        store = os.path.join(work, "store")
        subprocess.run(
            [*STRATA, "--root", store, "import", rootfs, "bb"], check=True, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL
        )
        bundle = os.path.join(work, "bundle")
        subprocess.run(["crun", "spec"], cwd=bundle, check=True)
        with open(os.path.join(bundle, "config.json")) as f:
            spec = json.load(f)
        spec["process"]["terminal"] = False
        spec["process"]["args"] = ["/bin/true"]
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(spec, f)
        run = [*STRATA, "--root", store, "run", "--rm", "bb", "/bin/true"]
        sides = {
            "strata run --rm": lambda i: run,
            "strata, no zygote": lambda i: run,
            "crun run": lambda i: ["crun", "run", "-b", bundle, f"bench{i}"],
            "strata-oci run": lambda i: [
                os.path.join(os.path.dirname(sys.executable), "strata-oci"),
                "--root",
                os.path.join(work, "oci-state"),
                "run",
                "-b",
                bundle,
                f"sbench{i}",
            ],
            "runc run": lambda i: [
                "runc",
                "--root",
                os.path.join(work, "runc-state"),
                "run",
                "-b",
                bundle,
                f"rbench{i}",
            ],
            "bwrap": lambda i: [
                "bwrap",
                "--bind",
                rootfs,
                "/",
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--unshare-all",
                "/bin/true",
            ],
            "python3 -c pass": lambda i: [sys.executable, "-c", "pass"],
        }
        for name in ("crun run", "strata-oci run", "runc run"):
            probe = subprocess.run(sides[name]("probe"), capture_output=True, text=True, env=ENV, cwd=REPO)
            if probe.returncode != 0:  # e.g. crun: "cgroups in hybrid mode not supported" on v1 hybrid hosts
                print(f"{name} cannot run on this host ({probe.stderr.strip() or probe.stdout.strip()}): left out")
                del sides[name]
        envs = {name: cold if "no zygote" in name else ENV for name in sides}
        for i in range(3):  # warm-up: the zygote starts, caches fill
            for name, cmd in sides.items():
                timed(cmd(f"warm{i}"), envs[name])
        times: dict[str, list[float]] = {k: [] for k in sides}
        for i in range(args.runs):  # interleaved, so the machine's noise falls on all sides alike
            for name, cmd in sides.items():
                times[name].append(timed(cmd(i), envs[name]))
        base_name = "crun run" if "crun run" in times else "bwrap"
        base = statistics.median(times[base_name])
        print(f"{'start-up':<20}{'median ms':>10}{'x ' + base_name:>12}")
        for name, values in times.items():
            m = statistics.median(values)
            print(f"{name:<20}{m * 1000:>10.1f}{m / base:>11.2f}x")

        before = du(store)
        ids = []
        for i in range(20):
            out = subprocess.run(
                [
                    *STRATA,
                    "--root",
                    store,
                    "run",
                    "-d",
                    "--name",
                    f"c{i}",
                    "bb",
                    "sh",
                    "-c",
                    f"echo {i} > /tmp/mine; exec sleep 1000",
                ],
                check=True,
                capture_output=True,
                text=True,
                env=ENV,
                cwd=REPO,
            )
            ids.append(out.stdout.strip())
        states = []
        for cid in ids:
            with open(os.path.join(store, "containers", cid, "state.json")) as f:
                states.append(json.load(f))
        rss = [memory_kib(s["SupervisorPid"], "Rss") + memory_kib(s["UnionPid"], "Rss") for s in states]
        pss = [memory_kib(s["SupervisorPid"], "Pss") + memory_kib(s["UnionPid"], "Pss") for s in states]
        uppers = sum(du(os.path.join(store, "containers", cid, "upper")) for cid in ids)
        after = du(store)
        layer_dirs = du(os.path.join(store, "layers"))
        print(
            f"20 running containers: store grew {(after - before) / 1024:.0f} KiB "
            f"(their writable layers: {uppers / 1024:.0f} KiB; records, logs and dirs the rest); "
            f"the shared image layer is {layer_dirs / 1024:.0f} KiB, stored once"
        )
        print(
            f"memory per running container (supervisor + unionfs): RSS {statistics.median(rss) / 1024:.1f} MiB, "
            f"PSS {statistics.median(pss) / 1024:.1f} MiB (median)"
        )
        subprocess.run(
            [*STRATA, "--root", store, "rm", "-f", *ids], check=True, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL
        )
    finally:
        stop_zygote(zygote)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
