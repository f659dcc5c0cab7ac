"""Where a ``strata run --rm IMAGE /bin/true`` spends its time, phase by phase.

The zygote is started under ``strace -f --seccomp-bpf -ttt`` (only the few syscalls that mark a phase
stop the process), and each run's trace is cut at those marks:

  client start    the bench spawns ``strata``  -> the zygote accepts its connection
  fork, prepare   accept                       -> the command's fork forks the union daemon
  union mount     the daemon's fork            -> it says "ok" (mounted, INIT answered)
  init, cgroup    the init's fork              -> it says "pid N" (PID 1 is in its cgroup)
  network         the init says "ns"           -> the lease is written (veth, address, route, nft)
  wait for go     the later of the above       -> the supervisor writes "go"
  PID 1 set-up    "go"                         -> execve of the command (root, pivot, caps, seccomp)
  command         execve                       -> PID 1 exits
  teardown        PID 1 exits                  -> the client is told "exit 0" (veth, unmount,
                                                  cgroup, container removed)
  client end      "exit 0"                     -> the client has exited

Phases that overlap (the union's start, the init's cgroup move and the network) are shown each from
its own start; the critical path is the sum of the others. strace slows every marked syscall, so
the milliseconds are larger than ``bench/runner_bench.py``'s untraced total (printed beside them for
scale): read the shares, not the absolute values.

Usage: ``python bench/start_phases.py [--runs 10]`` as root.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from runner_bench import ENV, REPO, STRATA, busybox_rootfs, stop_zygote, timed  # noqa: E402

MARKS = "execve,clone,clone3,mount,unshare,accept4,write,sendto,exit_group"
LINE = re.compile(r"^(\d+) +(\d+\.\d+) (.*)$")


def parse(path: str, since: float) -> list[tuple[int, float, str]]:
    """(pid, time, call) of each event after ``since``; an interrupted call is joined to its end."""
    events, pending = [], {}
    with open(path, errors="replace") as f:
        for raw in f:
            m = LINE.match(raw.rstrip("\n"))
            if not m:
                continue
            pid, t, call = int(m[1]), float(m[2]), m[3]
            if call.endswith("<unfinished ...>"):
                pending[pid] = (t, call.removesuffix("<unfinished ...>"))
                continue
            if call.startswith("<... ") and pid in pending:  # (timed at its end: an accept, a wait)
                head = pending.pop(pid)[1]
                call = head + call.split("resumed>", 1)[1]
            if t >= since:
                events.append((pid, t, call))
    return events


def phases(events: list[tuple[int, float, str]], zygote: int, spawned: float, ended: float) -> dict[str, float]:
    def first(pred: object, after: float = 0.0) -> tuple[int, float, str]:
        for e in events:
            if e[1] >= after and pred(e):  # type: ignore[operator]
                return e
        raise LookupError("a mark is missing from the trace")

    accept = first(lambda e: e[0] == zygote and e[2].startswith("accept4(") and "= -1" not in e[2])
    fork = first(lambda e: e[0] == zygote and e[2].startswith("clone"), accept[1])
    worker = int(fork[2].rsplit("=", 1)[1])
    union_mount = first(lambda e: e[2].startswith('mount("strata-unionfs:'))
    union = union_mount[0]
    union_fork = first(lambda e: e[0] == worker and e[2].startswith("clone") and e[2].endswith(f"= {union}"))
    ok = first(lambda e: e[0] == union and e[2].startswith("write(") and '"ok", 2' in e[2])
    ns = first(lambda e: e[2].startswith("write(") and '"ns\\n", 3' in e[2])
    helper = ns[0]
    init_fork = first(lambda e: e[0] == worker and e[2].startswith("clone") and e[2].endswith(f"= {helper}"))
    pid_line = first(lambda e: e[0] == helper and e[2].startswith("write(") and '"pid ' in e[2])
    lease = first(lambda e: e[0] == worker and e[2].startswith("write(") and '\\"bridge\\"' in e[2], ns[1])
    go = first(lambda e: e[0] == worker and e[2].startswith("write(") and '"go", 2' in e[2])
    execve = first(lambda e: e[2].startswith('execve("/bin/true"'))
    command_end = first(lambda e: e[0] == execve[0] and e[2].startswith("exit_group"), execve[1])
    told = first(lambda e: e[0] == worker and e[2].startswith("sendto(") and '"exit 0\\n"' in e[2])
    ms = 1000.0
    return {
        "client start": (accept[1] - spawned) * ms,
        "fork, prepare": (union_fork[1] - accept[1]) * ms,
        "union mount (overlaps)": (ok[1] - union_fork[1]) * ms,
        "init, cgroup (overlaps)": (pid_line[1] - init_fork[1]) * ms,
        "network (overlaps)": (lease[1] - ns[1]) * ms,
        "wait for go": (go[1] - union_fork[1]) * ms,
        "PID 1 set-up": (execve[1] - go[1]) * ms,
        "command": (command_end[1] - execve[1]) * ms,
        "teardown": (told[1] - command_end[1]) * ms,
        "client end": (ended - told[1]) * ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: containers need root")
    if not shutil.which("strace"):
        sys.exit("bench: strace is not installed")
    work = tempfile.mkdtemp(prefix="phases-")
    zygote_dir = os.path.join(work, "zygote")
    os.mkdir(zygote_dir, 0o700)
    env = {**ENV, "STRATA_ZYGOTE_DIR": zygote_dir}
    trace = os.path.join(work, "trace")
    tracer = None
    try:
        rootfs = os.path.join(work, "rootfs")
        busybox_rootfs(rootfs)
        store = os.path.join(work, "store")
        subprocess.run(
            [*STRATA, "--root", store, "import", rootfs, "bb"], check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL
        )
        run = [*STRATA, "--root", store, "run", "--rm", "bb", "/bin/true"]
        untraced = [timed(run, env) for _ in range(args.runs + 2)][2:]  # (the first starts a zygote)
        stop_zygote(zygote_dir)
        with open(STRATA[0], "rb") as f:  # the interpreter the client names: the zygote checks it is its own
            python = f.readline()[2:].decode().strip() if STRATA[0] != sys.executable else sys.executable
        tracer = subprocess.Popen(
            [
                "strace",
                "-f",
                "--seccomp-bpf",
                "-ttt",
                "-s",
                "64",
                "-o",
                trace,
                "-e",
                f"trace={MARKS}",
                python,
                "-m",
                "runner.zygote",
                zygote_dir,
            ],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        socket_path = os.path.join(zygote_dir, "zygote.sock")
        while not os.path.exists(socket_path):  # (the zygote binds its socket once it has imported all)
            if tracer.poll() is not None:
                sys.exit("bench: the traced zygote did not start")
            time.sleep(0.05)
        with open(os.path.join(zygote_dir, "zygote.pid")) as f:
            zygote = int(f.read())
        spans = []
        for _ in range(args.runs + 2):
            spawned = time.time()
            timed(run, env)
            spans.append((spawned, time.time()))
        stop_zygote(zygote_dir)
        tracer.wait()  # (its output is buffered until it exits)
        tracer = None
        rows = [phases(parse(trace, spawned), zygote, spawned, ended) for spawned, ended in spans[2:]]
    finally:  # (the first runs warm the zygote's caches)
        if tracer is not None:
            stop_zygote(zygote_dir)
            tracer.send_signal(signal.SIGTERM)
            tracer.wait()
        shutil.rmtree(work, ignore_errors=True)
    medians = {name: statistics.median(r[name] for r in rows) for name in rows[0]}
    path = sum(value for name, value in medians.items() if "overlaps" not in name)
    print(
        f"strata run --rm bb /bin/true: {statistics.median(untraced) * 1000:.1f} ms untraced, "
        f"{path:.1f} ms traced (the critical path's phases, medians of {args.runs})"
    )
    print(f"{'phase':26} {'median ms':>9} {'share':>6}")
    for name, value in medians.items():
        share = "" if "overlaps" in name else f"{value / path:6.0%}"
        print(f"{name:26} {value:9.1f} {share:>6}")


if __name__ == "__main__":
    main()
