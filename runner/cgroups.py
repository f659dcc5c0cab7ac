"""Per-container cgroups, v1 and v2 behind one interface, chosen by what the host has.

Docker's meanings: ``--cpu-shares`` is a relative weight (v1 ``cpu.shares``; v2 ``cpu.weight`` with the
2025 conversion of opencontainers/cgroups, in which 1024 shares give weight 100), ``-m`` a hard limit
(v1 ``memory.limit_in_bytes`` and, where swap accounting exists, ``memory.memsw.limit_in_bytes`` =
2x; v2 ``memory.max`` and ``memory.swap.max`` = the limit again, so memory + swap = 2x).

Every group gets the container's device allow-list (``devices.py``: v1's ``devices`` controller, a
BPF program on v2) before any process joins it: a container never reads or writes a host device it
was not given, whatever nodes it makes (mknod is allowed, as in Docker).

The root is a parameter so that both code paths are tested: v2 against a file-level fake root where
the host has no v2 controllers.
"""

from __future__ import annotations

import _signal  # (``signal``'s enums import ``enum``: ~5 ms of a strata-oci create)
import math
import os
import time

from . import devices
from .errors import RunnerError

TYPE_CHECKING = False
if TYPE_CHECKING:  # (``typing`` is ~10 ms of a strata-oci create's start-up)
    from collections.abc import Callable
    from typing import Any

    from .devices import DeviceRule

GROUP = "strata"


def shares_to_weight(shares: int) -> int:
    """cgroup v2 weight for Docker cpu shares (opencontainers/cgroups PR #20; crun, runc 2025)."""
    if shares <= 2:
        return 1
    if shares >= 262144:
        return 10000
    level = math.log2(shares)
    return math.ceil(10 ** ((level * level + 125 * level) / 612.0 - 7.0 / 34.0))


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _settle(done: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """The kernel changes a group's state asynchronously: poll until it reports ``done``, bounded."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RunnerError(f"the container did not become {what} within {timeout:g} s")
        time.sleep(0.001)


class Cgroup:
    """One container's cgroup. ``create``, ``limit`` (or ``apply``), ``add``, ``pids``, ``oom_killed``,
    ``remove``. ``path``: where it is in each hierarchy, relative to the hierarchy's root (an OCI
    config's ``linux.cgroupsPath``, e.g. ``machine.slice/libpod-x``); default ``strata/<name>``."""

    version = 0

    def __init__(self, name: str, path: str | None = None) -> None:
        self.name = name
        self.path = _clean_path(path) if path is not None else f"{GROUP}/{name}"

    def dirs(self) -> list[str]:
        raise NotImplementedError

    def create(self, device_rules: list[DeviceRule] | None = None) -> None:
        """Make the group, with ``device_rules`` (default: ``devices.DEFAULT_RULES``) in force."""
        raise NotImplementedError

    def limit(self, cpu_shares: int | None, memory: int | None) -> None:
        raise NotImplementedError

    def apply(self, resources: dict[str, Any]) -> None:
        """An OCI config's ``linux.resources`` (but its devices: ``create`` takes those): memory
        (limit, swap as memory + swap, -1 unlimited), cpu (shares, quota, period) and pids (limit),
        written in an order the kernel accepts in a fresh group, and the cpuset (cpu's cpus and
        mems). Anything else present was refused by ``runner.oci.spec.check``."""
        memory, cpu = resources.get("memory") or {}, resources.get("cpu") or {}
        limit = memory.get("limit")
        swap = memory.get("swap")
        for path, value in self._writes(
            limit,
            swap,
            cpu.get("shares"),
            cpu.get("quota"),
            cpu.get("period"),
            (resources.get("pids") or {}).get("limit"),
        ):
            _write(path, value)
        if cpu.get("cpus") or cpu.get("mems"):
            self.pin(cpu.get("cpus"), cpu.get("mems"))

    def pin(self, cpus: str | None, mems: str | None) -> None:
        """Keep the group's processes to these CPUs (and memory nodes): a fresh group's cpuset."""
        raise NotImplementedError

    def _writes(
        self,
        limit: int | None,
        swap: int | None,
        shares: int | None,
        quota: int | None,
        period: int | None,
        pids: int | None,
    ) -> list[tuple[str, str]]:
        raise NotImplementedError

    def oom_killed(self) -> bool:
        raise NotImplementedError

    @staticmethod
    def _oom_kills(path: str) -> bool:
        """Did the kernel's OOM killer act in this group? (``oom_kill N`` in v1's memory.oom_control
        and v2's memory.events alike)."""
        try:
            text = _read(path)
        except FileNotFoundError:
            return False
        for line in text.splitlines():
            name, _, count = line.partition(" ")
            if name == "oom_kill":
                return int(count) > 0
        return False

    def freeze(self, frozen: bool) -> None:
        """Stop (or resume) every process in the group; returns once the kernel says it is done."""
        raise NotImplementedError

    def frozen(self) -> bool:
        """Is the group frozen (or freezing)? False where there is no freezer."""
        return False

    def thaw(self) -> None:
        """Resume a frozen group, if it is one (quietly: there may be no group, or no freezer)."""
        try:
            self.freeze(False)
        except (OSError, RunnerError):
            pass

    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.dirs()]

    def add(self, pid: int) -> None:
        for path in self.procs_files():
            _write(path, str(pid))

    def pids(self) -> list[int]:
        found: set[int] = set()
        for path in self.procs_files():
            try:
                found.update(int(x) for x in _read(path).split())
            except FileNotFoundError:
                continue
        return sorted(found)

    def kill_all(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, _signal.SIGKILL)
            except ProcessLookupError:
                pass

    def remove(self) -> None:
        for d in self.dirs():
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass

    def destroy(self, timeout: float = 10.0) -> None:
        """Kill every member, wait (bounded) until the kernel has reaped them, remove the group.
        A group that will not empty is left in place rather than reported as gone."""
        deadline = time.monotonic() + timeout
        while self.pids() and time.monotonic() < deadline:
            self.kill_all()
            time.sleep(0.01)  # the kernel reaps killed members asynchronously
        try:
            self.remove()
        except OSError:
            pass


class V1(Cgroup):
    version = 1

    def __init__(self, name: str, root: str = "/sys/fs/cgroup", path: str | None = None) -> None:
        super().__init__(name, path)
        cpu = next(
            (os.path.join(root, c) for c in ("cpu,cpuacct", "cpu") if os.path.isdir(os.path.join(root, c))),
            os.path.join(root, "cpu"),
        )
        self.cpu = os.path.join(cpu, self.path)
        self.memory = os.path.join(root, "memory", self.path)
        freezer = os.path.join(root, "freezer")
        self.freezer = os.path.join(freezer, self.path) if os.path.isdir(freezer) else None
        self.devices_root = os.path.join(root, "devices")
        self.devices = os.path.join(self.devices_root, self.path)
        # pids and cpuset: only for such a limit (each v1 hierarchy a process joins costs a move), or if made
        self.pids_dir = os.path.join(root, "pids", self.path) if os.path.isdir(os.path.join(root, "pids")) else None
        self.with_pids = False
        self.cpuset_root = os.path.join(root, "cpuset")
        self.cpuset_dir = os.path.join(self.cpuset_root, self.path)
        self.with_cpuset = False

    def dirs(self) -> list[str]:
        pids = [self.pids_dir] if self.pids_dir and (self.with_pids or os.path.isdir(self.pids_dir)) else []
        cpuset = [self.cpuset_dir] if self.with_cpuset or os.path.isdir(self.cpuset_dir) else []
        return [self.cpu, self.memory, self.devices] + ([self.freezer] if self.freezer else []) + pids + cpuset

    def make_cpuset(self) -> str:
        """The container's group in the v1 cpuset hierarchy, made with its parents as needed; its dir."""
        if not os.path.isdir(self.cpuset_root):
            raise RunnerError("this host has no cpuset cgroup: cannot pin the container to cpus")
        level = self.cpuset_root
        for part in self.path.split("/"):
            child = os.path.join(level, part)
            if not os.path.isdir(child):
                os.mkdir(child)
                for name in ("cpuset.cpus", "cpuset.mems"):  # empty in a new v1 group: no task could join
                    _write(os.path.join(child, name), _read(os.path.join(level, name)).strip())
            level = child
        return level

    def pin(self, cpus: str | None, mems: str | None) -> None:
        level = self.make_cpuset()
        self.with_cpuset = True
        if mems:
            _write(os.path.join(level, "cpuset.mems"), mems)
        if cpus:
            _write(os.path.join(level, "cpuset.cpus"), cpus)

    def _writes(
        self,
        limit: int | None,
        swap: int | None,
        shares: int | None,
        quota: int | None,
        period: int | None,
        pids: int | None,
    ) -> list[tuple[str, str]]:
        writes = []
        if limit:
            writes.append((os.path.join(self.memory, "memory.limit_in_bytes"), str(limit)))
        memsw = os.path.join(self.memory, "memory.memsw.limit_in_bytes")
        if swap and (swap != -1 or os.path.exists(memsw)):
            if not os.path.exists(memsw):
                raise RunnerError("this host has no swap accounting (memory.memsw): cannot limit memory + swap")
            writes.append((memsw, str(swap)))
        if shares:
            writes.append((os.path.join(self.cpu, "cpu.shares"), str(shares)))
        if period:
            writes.append((os.path.join(self.cpu, "cpu.cfs_period_us"), str(period)))
        if quota:
            writes.append((os.path.join(self.cpu, "cpu.cfs_quota_us"), str(quota)))
        if pids:
            if self.pids_dir is None:
                raise RunnerError("this host has no pids cgroup: cannot limit the number of processes")
            self.with_pids = True
            os.makedirs(self.pids_dir, exist_ok=True)
            writes.append((os.path.join(self.pids_dir, "pids.max"), str(pids) if pids > 0 else "max"))
        return writes

    def frozen(self) -> bool:
        try:
            return self.freezer is not None and _read(os.path.join(self.freezer, "freezer.state")).strip() != "THAWED"
        except OSError:
            return False

    def freeze(self, frozen: bool) -> None:
        if self.freezer is None:
            raise RunnerError("this host has no freezer cgroup: cannot pause the container")
        state = os.path.join(self.freezer, "freezer.state")
        want = "FROZEN" if frozen else "THAWED"
        _write(state, want)
        _settle(lambda: _read(state).strip() == want, want.lower())  # FREEZING until every task stops

    def create(self, device_rules: list[DeviceRule] | None = None) -> None:
        if not os.path.isdir(self.devices_root):  # no allow-list possible: no container (as runc)
            raise RunnerError(f"this host has no devices cgroup at {self.devices_root}: cannot fence devices")
        for d in self.dirs():
            os.makedirs(d, exist_ok=True)
        devices.apply_v1(self.devices, devices.DEFAULT_RULES if device_rules is None else device_rules)

    def limit(self, cpu_shares: int | None, memory: int | None) -> None:
        if cpu_shares:
            _write(os.path.join(self.cpu, "cpu.shares"), str(cpu_shares))
        if memory:
            _write(os.path.join(self.memory, "memory.limit_in_bytes"), str(memory))
            memsw = os.path.join(self.memory, "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):
                _write(memsw, str(2 * memory))

    def oom_killed(self) -> bool:
        return self._oom_kills(os.path.join(self.memory, "memory.oom_control"))


class V2(Cgroup):
    version = 2

    def __init__(
        self, name: str, root: str = "/sys/fs/cgroup", path: str | None = None, delegated: str | None = None
    ) -> None:
        super().__init__(name, path)
        self.root = root
        self.dir = os.path.join(root, self.path)
        # rootless: the subtree delegated to the user (its controllers enabled by whoever delegated
        # it, systemd's user@.service); nothing above it is ours to write, no device program ours to load
        self.delegated = delegated

    def dirs(self) -> list[str]:
        return [self.dir]

    def create(self, device_rules: list[DeviceRule] | None = None) -> None:
        parent = os.path.dirname(self.dir)
        os.makedirs(parent, exist_ok=True)
        top = os.path.join(self.root, self.delegated) if self.delegated else self.root
        ancestors = [top]
        for part in os.path.relpath(parent, top).split("/"):
            if part != ".":
                ancestors.append(os.path.join(ancestors[-1], part))
        for d in ancestors:  # let the controllers reach the container's group
            path = os.path.join(d, "cgroup.subtree_control")
            enabled = _read(path).split() if os.path.exists(path) else []
            available = _read(os.path.join(d, "cgroup.controllers")).split() if os.path.exists(path) else []
            wanted = [
                f"+{c}" for c in ("cpu", "memory", "pids") if c not in enabled and (c in available or c != "pids")
            ]
            if wanted:
                _write(path, " ".join(wanted))
        os.makedirs(self.dir, exist_ok=True)
        if not self.delegated:  # (a rootless container's user namespace keeps host devices out)
            devices.attach_v2(self.dir, devices.DEFAULT_RULES if device_rules is None else device_rules)

    def _writes(
        self,
        limit: int | None,
        swap: int | None,
        shares: int | None,
        quota: int | None,
        period: int | None,
        pids: int | None,
    ) -> list[tuple[str, str]]:
        writes = []
        if limit:  # (-1, the runtime-spec's "unlimited", is "max" to a v2 kernel, which refuses -1)
            writes.append((os.path.join(self.dir, "memory.max"), str(limit) if limit > 0 else "max"))
        if swap:  # v2's swap.max is swap alone; the runtime-spec's is memory + swap (as v1)
            value = "max" if swap == -1 or not limit or limit == -1 else str(max(swap - limit, 0))
            writes.append((os.path.join(self.dir, "memory.swap.max"), value))
        if shares:
            writes.append((os.path.join(self.dir, "cpu.weight"), str(shares_to_weight(shares))))
        if quota or period:
            writes.append(
                (os.path.join(self.dir, "cpu.max"), f"{quota if quota and quota > 0 else 'max'} {period or 100000}")
            )
        if pids:
            writes.append((os.path.join(self.dir, "pids.max"), str(pids) if pids > 0 else "max"))
        return writes

    def pin(self, cpus: str | None, mems: str | None) -> None:
        top = os.path.join(self.root, self.delegated) if self.delegated else self.root
        level = top
        for part in os.path.relpath(self.dir, top).split("/"):  # cpuset enabled down to the group
            control = os.path.join(level, "cgroup.subtree_control")
            if "cpuset" not in _read(control).split():
                _write(control, "+cpuset")
            level = os.path.join(level, part)
        if mems:
            _write(os.path.join(self.dir, "cpuset.mems"), mems)
        if cpus:
            _write(os.path.join(self.dir, "cpuset.cpus"), cpus)

    def limit(self, cpu_shares: int | None, memory: int | None) -> None:
        if cpu_shares:
            _write(os.path.join(self.dir, "cpu.weight"), str(shares_to_weight(cpu_shares)))
        if memory:
            _write(os.path.join(self.dir, "memory.max"), str(memory))
            _write(os.path.join(self.dir, "memory.swap.max"), str(memory))

    def frozen(self) -> bool:
        try:
            return _read(os.path.join(self.dir, "cgroup.freeze")).strip() == "1"
        except OSError:
            return False

    def freeze(self, frozen: bool) -> None:
        want = "1" if frozen else "0"
        _write(os.path.join(self.dir, "cgroup.freeze"), want)
        events = os.path.join(self.dir, "cgroup.events")
        _settle(lambda: f"frozen {want}" in _read(events).splitlines(), "frozen" if frozen else "thawed")

    def oom_killed(self) -> bool:
        return self._oom_kills(os.path.join(self.dir, "memory.events"))


class NoCgroup(Cgroup):
    """A rootless container's stand-in where the user has no cgroup of its own to manage (v1, or v2
    without delegation): no limits, no device list (the user namespace keeps host devices out), and
    its members are the processes of PID 1's PID namespace (``pid``), all of which die with PID 1."""

    version = 0

    def __init__(self, name: str, pid: int = 0) -> None:
        super().__init__(name)
        self.pid = pid

    def dirs(self) -> list[str]:
        return []

    def create(self, device_rules: list[DeviceRule] | None = None) -> None:
        pass

    def limit(self, cpu_shares: int | None, memory: int | None) -> None:
        if cpu_shares or memory:
            raise RunnerError("this rootless host delegates no cgroup to you: --cpu-shares and -m cannot be enforced")

    def _writes(
        self,
        limit: int | None,
        swap: int | None,
        shares: int | None,
        quota: int | None,
        period: int | None,
        pids: int | None,
    ) -> list[tuple[str, str]]:
        if any((limit, swap, shares, quota, period, pids)):
            raise RunnerError("this rootless host delegates no cgroup to you: linux.resources cannot be enforced")
        return []

    def pin(self, cpus: str | None, mems: str | None) -> None:
        raise RunnerError("this rootless host delegates no cgroup to you: cannot pin the container to cpus")

    def oom_killed(self) -> bool:
        return False

    def freeze(self, frozen: bool) -> None:
        raise RunnerError("this rootless host delegates no cgroup to you: cannot pause the container")

    def thaw(self) -> None:
        pass

    def pids(self) -> list[int]:
        try:
            ns = os.stat(f"/proc/{self.pid}/ns/pid").st_ino if self.pid else None
        except OSError:
            return []
        if ns is None or ns == os.stat("/proc/self/ns/pid").st_ino:  # gone, its pid reused: not a container
            return []
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.stat(f"/proc/{entry}/ns/pid").st_ino == ns:
                        found.append(int(entry))
                except OSError:
                    continue
        return sorted(found)

    def kill_all(self) -> None:
        if self.pid and self.pids():  # PID 1 takes its namespace with it
            try:
                os.kill(self.pid, _signal.SIGKILL)
            except ProcessLookupError:
                pass

    def remove(self) -> None:
        pass


def _clean_path(path: str) -> str:
    """A group's path relative to a hierarchy's root: ``/machine.slice/x`` and ``machine.slice/x``
    alike (runc reads a relative one from its own group; here both start at the root)."""
    parts = [p for p in path.split("/") if p and p != "."]
    if not parts or ".." in parts:
        raise RunnerError(f"cgroupsPath {path!r} names no group under the cgroup root")
    return "/".join(parts)


def delegated_v2(root: str = "/sys/fs/cgroup", own: str = "/proc/self/cgroup") -> str | None:
    """The cgroup v2 subtree delegated to this (ordinary) user, relative to ``root``: the highest
    ancestor of our own group (``own``: /proc/self/cgroup) that belongs to us, as systemd delegates
    ``user@UID.service``, if cpu and memory are enabled for its children. None elsewhere (cgroup v1
    or hybrid hosts, no delegation)."""
    if not os.path.exists(os.path.join(root, "cgroup.controllers")):
        return None
    try:
        with open(own) as f:
            line = next((entry for entry in f if entry.startswith("0::")), "")
    except OSError:
        return None
    parts = [p for p in line[3:].strip().split("/") if p]
    found = None
    for i in range(len(parts), 0, -1):
        try:
            if os.stat(os.path.join(root, *parts[:i])).st_uid != os.geteuid():
                break
        except OSError:
            break
        found = "/".join(parts[:i])
    if found is None:
        return None
    try:
        enabled = set(_read(os.path.join(root, found, "cgroup.subtree_control")).split())
    except OSError:
        return None
    return found if {"cpu", "memory"} <= enabled else None


def for_host(name: str, root: str = "/sys/fs/cgroup", path: str | None = None) -> Cgroup:
    """v2 when the root is a unified hierarchy with cpu and memory; else v1 (hybrid hosts too). An
    ordinary user gets a group under its delegated v2 subtree (``delegated_v2``:
    ``<subtree>/strata/<name>``), or none (``NoCgroup``). ``path``: the group's place in the
    hierarchy (default ``strata/<name>``)."""
    if os.geteuid() != 0:
        base = delegated_v2(root)
        return NoCgroup(name) if base is None else V2(name, root, path or f"{base}/strata/{name}", delegated=base)
    controllers = os.path.join(root, "cgroup.controllers")
    if os.path.exists(controllers) and {"cpu", "memory"} <= set(_read(controllers).split()):
        return V2(name, root, path)
    return V1(name, root, path)


def load(version: int, name: str, root: str = "/sys/fs/cgroup", pid: int = 0, path: str | None = None) -> Cgroup:
    """The group a container was created with (``version`` 0: none; its members then are those of
    PID 1's PID namespace, ``pid``)."""
    if version == 0:
        return NoCgroup(name, pid)
    if version == 2 and os.geteuid() != 0 and path is None:  # rootless: under the delegated subtree
        return for_host(name, root)
    return V2(name, root, path) if version == 2 else V1(name, root, path)
