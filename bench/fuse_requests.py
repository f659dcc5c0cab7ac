"""How many FUSE requests a workload costs, fuse-overlayfs against strata: the kernel sends both the
same kinds of request, so the count shows what each daemon lets the kernel cache, apart from how fast
each answers (a round trip costs about 100 µs on this shared 2-vCPU VM, C or Python alike).

Counts the daemon's reads of /dev/fuse (one per request) with ``strace -f``, which slows every
request down: the times are meaningless, the counts are not.

Usage: ``python bench/fuse_requests.py [--only NAME,NAME]`` (as root; strace installed).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

from unionfs_bench import each_pass, ensure_inputs, scratch_fs, workload_args

KINDS = ["fuse-overlayfs", "strata", "strata no-passthrough"]


def daemon_pid(kind: str, merged: str) -> int:
    """The pid serving ``merged``: the process holding a /dev/fuse fd whose command line names it."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().split(b"\0")
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        if os.fsencode(merged) in cmdline and any(
            os.path.realpath(f"/proc/{pid}/fd/{fd}") == "/dev/fuse" for fd in fds
        ):
            return int(pid)
    raise RuntimeError(f"no {kind} daemon serving {merged}")


def fuse_fds(pid: int) -> set[str]:
    return {fd for fd in os.listdir(f"/proc/{pid}/fd") if os.path.realpath(f"/proc/{pid}/fd/{fd}") == "/dev/fuse"}


# The kernel's request opcodes (include/uapi/linux/fuse.h) that the benches' workloads send.
OPCODES = {
    1: "LOOKUP",
    2: "FORGET",
    3: "GETATTR",
    4: "SETATTR",
    5: "READLINK",
    6: "SYMLINK",
    8: "MKNOD",
    9: "MKDIR",
    10: "UNLINK",
    11: "RMDIR",
    12: "RENAME",
    13: "LINK",
    14: "OPEN",
    15: "READ",
    16: "WRITE",
    17: "STATFS",
    18: "RELEASE",
    20: "FSYNC",
    21: "SETXATTR",
    22: "GETXATTR",
    23: "LISTXATTR",
    24: "REMOVEXATTR",
    25: "FLUSH",
    26: "INIT",
    27: "OPENDIR",
    28: "READDIR",
    29: "RELEASEDIR",
    34: "ACCESS",
    35: "CREATE",
    42: "BATCH_FORGET",
    43: "FALLOCATE",
    44: "READDIRPLUS",
    45: "RENAME2",
    46: "LSEEK",
    52: "STATX",
}


def count(pid: int, trace: str) -> Counter[str]:
    """Successful reads of a /dev/fuse fd in an ``strace -f -s 8 -x`` log, by request (the opcode
    is the header's second little-endian word); a blocking read shows as an ``<unfinished ...>``
    line and a ``<... read resumed>`` one, each with the thread's id."""
    fds = fuse_fds(pid)
    pending: dict[str, str] = {}  # thread -> the fd of its unfinished read
    n: Counter[str] = Counter()
    with open(trace) as f:
        for line in f:
            tid, _, rest = line.partition(" ")
            if (m := re.match(r"\s*read\((\d+),", rest)) is not None:
                if rest.rstrip().endswith("<unfinished ...>"):
                    pending[tid] = m.group(1)
                    continue
                fd = m.group(1)
            elif "<... read resumed>" in rest and tid in pending:
                fd = pending.pop(tid)
            else:
                continue
            if fd in fds and re.search(r"= \d+$", rest.rstrip()):
                head = re.search(r'"((?:\\x[0-9a-f]{2}){8})"', rest)
                op = int.from_bytes(bytes.fromhex(head.group(1).replace("\\x", ""))[4:8], "little") if head else 0
                n[OPCODES.get(op, f"op {op}")] += 1
    return n


def traced(pid: int) -> bool:
    """Has a tracer attached to every thread of ``pid``?"""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            if "TracerPid:\t0\n" in f.read():
                return False
    return True


def main() -> None:
    args = workload_args(repeat=False)
    if os.geteuid() != 0 or shutil.which("strace") is None:
        sys.exit("fuse_requests: needs root and strace")
    ensure_inputs()
    counts: dict[tuple[str, str], Counter[str]] = {}
    with scratch_fs():
        for label, kind, u, run in each_pass(KINDS, args.only, "ureq-"):
            pid = daemon_pid(kind, u.merged)
            trace = os.path.join(u.base, "trace")
            tracer = subprocess.Popen(
                ["strace", "-f", "-qq", "-s", "8", "-x", "-e", "trace=read", "-o", trace, "-p", str(pid)],
                stderr=subprocess.DEVNULL,
            )
            while not traced(pid):  # the workload starts once every thread is traced
                if tracer.poll() is not None:
                    sys.exit(f"fuse_requests: strace could not attach to {pid}")
                time.sleep(0.005)
            run()
            tracer.send_signal(signal.SIGINT)
            tracer.wait()
            counts[(label, kind)] = count(pid, trace)
            os.unlink(trace)
    labels = list(dict.fromkeys(label for label, _ in counts))
    print(f"{'workload':<36}" + "".join(f"{kind:>24}" for kind in KINDS))
    for label in labels:
        fo = counts[(label, "fuse-overlayfs")].total()
        cells = [f"{counts[(label, kind)].total():>16} {counts[(label, kind)].total() / fo:>6.2f}x" for kind in KINDS]
        print(f"{label:<36}" + "".join(f"{c:>24}" for c in cells))
    print("\nby request (the kinds that make up a tenth of a daemon's count or more)")
    for label in labels:
        for kind in KINDS:
            c = counts[(label, kind)]
            top = ", ".join(f"{op} {k}" for op, k in c.most_common() if k * 10 >= c.total())
            print(f"{label:<36}{kind:<24}{top}")


if __name__ == "__main__":
    main()
