"""A running container's resource counters, as ``docker stats`` reads them: CPU time, memory in use
and its limit, processes, network and block I/O. From the container's cgroup (v1: ``cpuacct.usage``,
``memory.usage_in_bytes`` less the inactive file cache, ``pids.current``; v2: ``cpu.stat``,
``memory.current``, ``pids.current``, ``io.stat``), its network namespace (``/proc/PID/net/dev``,
loopback left out) and, where there is no cgroup (rootless without delegation), the processes of
its PID namespace.

*Caveats*: on cgroup v1 the container has no blkio group (one more hierarchy would cost each start
a move), so block I/O is what its live processes did (``/proc/PID/io``), and where cpuacct is not
mounted with cpu (this host), CPU time is its live processes' and their reaped children's
(``/proc/PID/stat``): what processes that have ended did is not counted. On v2, block I/O is the
group's ``io.stat`` (where the io controller is on) and its union daemon's (``/proc/PID/io``), which
reads and writes the container's files from outside the group. Rootless without a cgroup, CPU time and memory are those of its live
processes (RSS), the limit the host's memory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from . import cgroups
from .containers import Container
from .process import process_alive

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    cpu: int = 0  # the container's CPU time, ns
    system: int = 0  # the host's CPU time (every CPU's), ns
    memory: int = 0  # bytes in use (the inactive file cache left out, as Docker's)
    limit: int = 0  # bytes it may use (the host's memory when it has no limit)
    pids: int = 0
    rx: int = 0
    tx: int = 0
    read: int = 0
    written: int = 0


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _number(path: str) -> int:
    text = _read(path).strip()
    return int(text) if text.isdigit() else 0


def _key(text: str, key: str) -> int:
    m = re.search(rf"^{re.escape(key)}\s+(\d+)", text, re.M)
    return int(m.group(1)) if m else 0


def host_memory() -> int:
    return _key(_read("/proc/meminfo").replace(":", "").replace(" kB", ""), "MemTotal") * 1024 or 1


def system_cpu() -> int:
    """The host's CPU time in ns (``/proc/stat``'s cpu line), what Docker's CPU % divides by."""
    fields = _read("/proc/stat").split("\n", 1)[0].split()[1:8]
    return sum(int(x) for x in fields) * 10**9 // _TICKS


def online_cpus() -> int:
    return len(os.sched_getaffinity(0))


def _net(pid: int) -> tuple[int, int]:
    rx = tx = 0
    for line in _read(f"/proc/{pid}/net/dev").splitlines()[2:]:
        name, _, counters = line.partition(":")
        values = counters.split()
        if name.strip() != "lo" and len(values) > 8:
            rx, tx = rx + int(values[0]), tx + int(values[8])
    return rx, tx


def _proc_cpu(pids: list[int]) -> int:
    """The CPU time of these processes and of their children they have reaped, ns."""
    ticks = 0
    for pid in pids:
        fields = _read(f"/proc/{pid}/stat").rsplit(")", 1)[-1].split()
        if len(fields) > 14:
            ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks * 10**9 // _TICKS


def _proc_io(pids: list[int]) -> tuple[int, int]:
    read = written = 0
    for pid in pids:
        text = _read(f"/proc/{pid}/io").replace(":", "")
        read, written = read + _key(text, "read_bytes"), written + _key(text, "write_bytes")
    return read, written


def sample(container: Container) -> Sample:
    """The container's counters now (all 0 for one that does not run)."""
    state = container.state()
    out = Sample(system=system_cpu(), limit=host_memory())
    pid = state.get("Pid", 0)
    if not state.get("Running") or not pid:
        return out
    cg = cgroups.load(container.config["Cgroup"]["Version"], container.id, pid=pid)
    if isinstance(cg, cgroups.V1):
        usage = os.path.join(cg.cpu, "cpuacct.usage")  # (where cpu and cpuacct are one hierarchy)
        out.cpu = _number(usage) if os.path.exists(usage) else _proc_cpu(cg.pids())
        stat = _read(os.path.join(cg.memory, "memory.stat"))
        out.memory = max(
            0, _number(os.path.join(cg.memory, "memory.usage_in_bytes")) - _key(stat, "total_inactive_file")
        )
        out.limit = min(_number(os.path.join(cg.memory, "memory.limit_in_bytes")) or out.limit, out.limit)
        pids = cg.pids()
        out.pids = (
            _number(os.path.join(cg.pids_dir, "pids.current"))
            if cg.pids_dir and os.path.isdir(cg.pids_dir)
            else len(_read(os.path.join(cg.cpu, "tasks")).split())
        )
        out.read, out.written = _proc_io(pids)
    elif isinstance(cg, cgroups.V2):
        out.cpu = _key(_read(os.path.join(cg.dir, "cpu.stat")), "usage_usec") * 1000
        stat = _read(os.path.join(cg.dir, "memory.stat"))
        out.memory = max(0, _number(os.path.join(cg.dir, "memory.current")) - _key(stat, "inactive_file"))
        limit = _read(os.path.join(cg.dir, "memory.max")).strip()
        out.limit = min(int(limit), out.limit) if limit.isdigit() else out.limit
        out.pids = _number(os.path.join(cg.dir, "pids.current"))
        for line in _read(os.path.join(cg.dir, "io.stat")).splitlines():
            fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
            out.read += int(fields.get("rbytes", 0))
            out.written += int(fields.get("wbytes", 0))
        # the container's files are read and written by its union's daemon, outside its group (and
        # a FUSE write is no page the writer dirties: its /proc/PID/io counts none): the daemon's counts
        union = state.get("UnionPid", 0)
        if union and process_alive(union, state.get("UnionStart")):
            read, written = _proc_io([union])
            out.read, out.written = out.read + read, out.written + written
    else:
        pids = cg.pids()
        out.pids = len(pids)
        out.cpu = _proc_cpu(pids)
        for p in pids:
            out.memory += _key(_read(f"/proc/{p}/status").replace(":", "").replace(" kB", ""), "VmRSS") * 1024
        out.read, out.written = _proc_io(pids)
    if container.config["HostConfig"].get("NetworkMode") != "host":
        out.rx, out.tx = _net(pid)
    return out


def cpu_percent(before: Sample, after: Sample) -> float:
    """Docker's CPU %: the container's share of the host's CPU time meanwhile, times the CPUs."""
    system = after.system - before.system
    used = after.cpu - before.cpu
    if system <= 0 or used <= 0:
        return 0.0
    return used / system * online_cpus() * 100.0
