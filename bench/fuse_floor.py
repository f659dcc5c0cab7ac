"""What one FUSE round trip costs each daemon, and how much of strata's cost any Python daemon pays.

A statfs(2) on a mount always reaches its daemon (the kernel keeps no answer), so a loop of them
times one request each. Side by side in one run, each on a mount of its own:
- fuse-overlayfs and strata (``python -m unionfs``), mounted as ``unionfs_bench`` mounts them;
- ``null``: a pyfuse3 filesystem, on strata's patched pyfuse3 and its main loop, whose statfs
  answers a constant. What it costs is the floor of pyfuse3 and trio under any Python filesystem.

Per request: the caller's wall time, and the daemon's CPU time (user and system, its threads
included, from /proc/PID/stat), as medians over ``--repeat`` runs, the kinds taking turns.

Usage: ``python bench/fuse_floor.py [--repeat N] [--requests N]`` (as root: the mounts). Also
``python bench/fuse_floor.py --serve MOUNTPOINT``: the null filesystem itself, in the foreground.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from daemon_cpu import cpu_times
from fuse_requests import daemon_pid
from unionfs_bench import OUT, Union, ensure_inputs, is_mounted

KINDS = ["fuse-overlayfs", "strata", "null"]


def serve(mountpoint: str) -> None:
    import pyfuse3
    import trio

    class Null(pyfuse3.Operations):
        async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
            return answer

    answer = pyfuse3.StatvfsData()
    answer.f_bsize = answer.f_frsize = 4096
    answer.f_namemax = 255
    pyfuse3.init(Null(), mountpoint, ["fsname=null-pyfuse3"])  # mounted once this returns
    print("ready", flush=True)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


class Mounted:
    """One kind's mount in ``base`` and its daemon's pid: fuse-overlayfs and strata as the unionfs
    bench mounts them (``Union``, over its layers), null from this script."""

    def __init__(self, kind: str, base: str) -> None:
        self.kind = kind
        self.union: Union | None = None
        self.null: subprocess.Popen[str] | None = None
        if kind == "null":
            self.merged = os.path.join(base, "merged")
            os.makedirs(self.merged)
            self.null = subprocess.Popen(
                [sys.executable, __file__, "--serve", self.merged], stdout=subprocess.PIPE, text=True
            )
            assert self.null.stdout is not None and self.null.stdout.readline() == "ready\n"
            self.pid = self.null.pid
        else:
            self.union = Union(kind, base)
            self.union.mount()
            self.merged = self.union.merged
            self.pid = daemon_pid(kind, self.merged)

    def unmount(self) -> None:
        if self.union is not None:
            if is_mounted(self.merged):
                self.union.unmount()
            return
        if is_mounted(self.merged):
            subprocess.run(["fusermount3", "-u", self.merged], check=True)
        if self.null is not None:
            self.null.wait()


def one_run(m: Mounted, requests: int) -> tuple[float, float, float]:
    """(wall, user CPU, system CPU) of the daemon per statfs, in seconds."""
    for _ in range(200):  # the first ones start the daemon's loop and fill the caches
        os.statvfs(m.merged)
    user0, sys0 = cpu_times(m.pid)
    start = time.perf_counter()
    for _ in range(requests):
        os.statvfs(m.merged)
    wall = time.perf_counter() - start
    user1, sys1 = cpu_times(m.pid)
    return wall / requests, (user1 - user0) / requests, (sys1 - sys0) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--serve", metavar="MOUNTPOINT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if os.geteuid() != 0:
        sys.exit("fuse_floor: needs root (fuse-overlayfs's mount)")
    ensure_inputs()  # the layers Union mounts
    base = tempfile.mkdtemp(prefix="floor-", dir=OUT)
    mounts: list[Mounted] = []
    found: dict[str, list[tuple[float, float, float]]] = {k: [] for k in KINDS}
    try:
        for kind in KINDS:
            mounts.append(Mounted(kind, os.path.join(base, kind)))
        for _ in range(args.repeat):
            for m in mounts:
                found[m.kind].append(one_run(m, args.requests))
    finally:
        for m in mounts:
            m.unmount()
        shutil.rmtree(base)
    print(f"{'daemon':<16}{'wall/request':>14}{'daemon CPU/request':>20}{'user':>8}{'sys':>8}")
    for kind in KINDS:
        wall, user, system = (statistics.median(r[i] for r in found[kind]) * 1e6 for i in range(3))
        print(f"{kind:<16}{wall:>11.1f} µs{user + system:>17.1f} µs{user:>5.1f} µs{system:>5.1f} µs")


if __name__ == "__main__":
    main()
