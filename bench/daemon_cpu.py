"""How much CPU each daemon spends on a workload, fuse-overlayfs against strata, read from
``/proc/PID/stat`` before and after it (user and system time, the daemon's threads included). Wall
time says how long the caller waited; CPU time says what serving it cost, which is what a host
running many containers pays. Medians over ``--repeat`` runs, the sides interleaved.

Usage: ``python bench/daemon_cpu.py [--only NAME,NAME] [--repeat N]`` (as root).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from fuse_requests import KINDS, daemon_pid
from unionfs_bench import each_pass, ensure_inputs, scratch_fs, workload_args

TICK = os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) seconds of ``pid`` and its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def main() -> None:
    args = workload_args()
    if os.geteuid() != 0:
        sys.exit("daemon_cpu: needs root (the workloads' mounts)")
    ensure_inputs()
    found: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    with scratch_fs():
        for _ in range(args.repeat):
            for label, kind, u, run in each_pass(KINDS, args.only, "ucpu-"):
                pid = daemon_pid(kind, u.merged)
                user0, sys0 = cpu_times(pid)
                start = time.perf_counter()
                run()
                wall = time.perf_counter() - start
                user1, sys1 = cpu_times(pid)
                found.setdefault((label, kind), []).append((wall, user1 - user0, sys1 - sys0))
    labels = list(dict.fromkeys(label for label, _ in found))
    print(f"{'workload':<36}{'FO wall':>9}{'user':>7}{'sys':>7}{'strata wall':>13}{'user':>7}{'sys':>7}{'cpu/FO':>8}")
    for label in labels:
        row = []
        for kind in KINDS:
            runs = found[(label, kind)]
            row.append([statistics.median(r[i] for r in runs) for i in range(3)])
        (fw, fu, fs), (sw, su, ss) = row
        ratio = f"{(su + ss) / (fu + fs):>7.2f}x" if fu + fs > 0 else f"{'-':>8}"
        print(f"{label:<36}{fw:>9.2f}{fu:>7.2f}{fs:>7.2f}{sw:>13.2f}{su:>7.2f}{ss:>7.2f}{ratio}")


if __name__ == "__main__":
    main()
