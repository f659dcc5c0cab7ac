"""A created container's cgroup limits changed in place (runc's ``update``): the runtime-spec's
LinuxResources, merged over what the container has, written in an order the kernel takes, v1 and v2;
and the groups a v1 container joins only once it is given such a limit (cpuset, pids).

Honoured: memory.limit and memory.swap (memory + swap, -1 unlimited), cpu.shares, cpu.quota,
cpu.period, cpu.cpus, cpu.mems, pids.limit (-1 unlimited). Anything else with a value is refused in
one line, devices too (runc's update skips them; here that would be a silent ignore).

v1: a container is made in cpu, memory, devices and freezer (and pids when limited): a cpuset or
pids limit added later makes that group (a new cpuset group seeded with its parent's cpus and mems,
as v1 wants before a task joins) and moves every process of the container into it, until none is
left outside (a process forking meanwhile: its child is moved on the next round). ``procs_files``
lists it for exec's joins, ``remove`` takes it away at delete.

Caveats: v2's cpuset controller is enabled down the container's ancestors on first use, which the
kernel refuses where an ancestor has processes of its own (no internal processes rule).
"""

from __future__ import annotations

import os

from .. import cgroups
from ..errors import RunnerError

TYPE_CHECKING = False
if TYPE_CHECKING:  # (``typing`` is ~10 ms of a strata-oci create's start-up)
    from typing import Any

HONOURED = {"memory": {"limit", "swap"}, "cpu": {"shares", "quota", "period", "cpus", "mems"}, "pids": {"limit"}}
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def ram_in_bytes(text: str) -> int:
    """runc's ``--memory`` spellings (docker/go-units ``RAMInBytes``): ``1024``, ``64m``, ``1.5g``,
    ``512KiB``; ``-1`` is unlimited."""
    if text.strip() == "-1":
        return -1
    import re  # (here, and in ``check``: ``update`` alone parses sizes and cpu lists; create imports this module)

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*", text, re.I)
    if not m:
        raise RunnerError(f"invalid size: {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def check(changes: Any) -> dict[str, dict[str, Any]]:
    """``changes`` (LinuxResources) reduced to what it asks: empty fields dropped, the rest checked."""
    if not isinstance(changes, dict):
        raise RunnerError("resources: not a JSON object")
    import re  # (see ``ram_in_bytes``)

    out: dict[str, dict[str, Any]] = {}
    for section, value in changes.items():
        if value in (None, "", 0, [], {}):
            continue
        if section not in HONOURED:
            raise RunnerError(f"resources: {section} is not supported by strata's update")
        if not isinstance(value, dict):
            raise RunnerError(f"resources: {section} must be an object")
        for key, v in value.items():
            if v is None or (key not in ("cpus", "mems") and v == 0) or v == "":
                continue  # (go-runc and the CRI send zeros for "unchanged")
            if key not in HONOURED[section]:
                raise RunnerError(f"resources: {section}.{key} is not supported by strata's update")
            if key in ("cpus", "mems"):
                if not isinstance(v, str) or not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", v):
                    raise RunnerError(f"resources: {section}.{key} must be a list such as 0-2,4: {v!r}")
            elif isinstance(v, bool) or not isinstance(v, int) or (v < 0 and v != -1):
                raise RunnerError(f"resources: {section}.{key} must be a whole number (or -1): {v!r}")
            out.setdefault(section, {})[key] = v
    return out


def update(cgroup: cgroups.Cgroup, current: dict[str, Any], changes: Any) -> dict[str, Any]:
    """Write ``changes`` to the container's ``cgroup``; returns the resources it has now (``current``
    with the changes over it). Fails in one line, naming the file the kernel refused."""
    asked = check(changes)
    memory = dict(current.get("memory") or {})
    if asked.get("memory", {}).get("limit") == -1 and "swap" not in asked["memory"]:
        asked["memory"]["swap"] = -1  # (runc: an unlimited memory asks unlimited swap too)
    merged = {**current}
    for section, fields in asked.items():
        merged[section] = {**(current.get(section) or {}), **fields}
    try:
        if "memory" in asked:
            memory.update(asked["memory"])
            _memory(cgroup, memory.get("limit"), memory.get("swap"))
        cpu = asked.get("cpu", {})
        if {"shares", "quota", "period"} & set(cpu):
            given = {"shares": cpu.get("shares")}
            if "quota" in cpu or "period" in cpu:  # both, merged: v2's cpu.max takes them in one write
                given.update(quota=merged["cpu"].get("quota"), period=merged["cpu"].get("period"))
            cgroup.apply({"cpu": given})
        if "cpus" in cpu or "mems" in cpu:
            _cpuset(cgroup, cpu.get("cpus"), cpu.get("mems"))
        if "pids" in asked:
            cgroup.apply({"pids": asked["pids"]})
            if isinstance(cgroup, cgroups.V1) and cgroup.pids_dir:
                _gather(cgroup, cgroup.pids_dir)
    except OSError as e:
        where = os.path.basename(e.filename) if e.filename else "the cgroup"
        raise RunnerError(f"cannot update the container's cgroup: {where}: {e.strerror}") from None
    return merged


def _memory(cgroup: cgroups.Cgroup, limit: int | None, swap: int | None) -> None:
    """v1 wants memory <= memory + swap at every step: the one that grows is written first (v2 has
    no such rule: ``cgroups.V2`` writes both as they are)."""
    if not isinstance(cgroup, cgroups.V1) or not limit or not swap:
        cgroup.apply({"memory": {"limit": limit, "swap": swap}})
        return
    memsw = os.path.join(cgroup.memory, "memory.memsw.limit_in_bytes")
    now = int(open(memsw).read()) if os.path.exists(memsw) else None
    grows = swap == -1 or (now is not None and swap >= now)
    for part in ("swap", "limit") if grows else ("limit", "swap"):
        cgroup.apply({"memory": {part: limit if part == "limit" else swap}})


def _v1_cpuset(cgroup: cgroups.V1) -> str:
    return os.path.join(os.path.dirname(cgroup.devices_root), "cpuset", cgroup.path)


def _cpuset(cgroup: cgroups.Cgroup, cpus: str | None, mems: str | None) -> None:
    if isinstance(cgroup, cgroups.V2):
        parts = cgroup.path.split("/")
        for depth in range(len(parts)):  # root .. parent: let cpuset reach the container's group
            control = os.path.join(cgroup.root, *parts[:depth], "cgroup.subtree_control")
            if "cpuset" not in _read(control).split():
                _write(control, "+cpuset")
        target = cgroup.dir
    elif isinstance(cgroup, cgroups.V1):
        target = cgroup.make_cpuset()
    else:
        raise RunnerError("this rootless host delegates no cgroup to you: cannot pin the container to cpus")
    if mems:
        _write(os.path.join(target, "cpuset.mems"), mems)
    if cpus:
        _write(os.path.join(target, "cpuset.cpus"), cpus)
    if isinstance(cgroup, cgroups.V1):
        _gather(cgroup, target)


def _gather(cgroup: cgroups.V1, target: str, rounds: int = 100) -> None:
    """Move every process of the container into the v1 group ``target`` (a hierarchy it was not in)."""
    procs = os.path.join(target, "cgroup.procs")
    for _ in range(rounds):
        missing = set(cgroup.pids()) - {int(p) for p in _read(procs).split()}
        if not missing:
            return
        for pid in sorted(missing):
            try:
                _write(procs, str(pid))
            except ProcessLookupError:  # gone meanwhile
                pass
    raise RunnerError(f"the container's processes keep forking: not all of them are in {target}")


def procs_files(cgroup: cgroups.Cgroup) -> list[str]:
    """The cgroup.procs files a process joining the container writes itself into."""
    files = cgroup.procs_files()
    cpuset = os.path.join(_v1_cpuset(cgroup), "cgroup.procs") if isinstance(cgroup, cgroups.V1) else ""
    if cpuset and os.path.isdir(os.path.dirname(cpuset)) and cpuset not in files:  # (a group made by update)
        files.append(cpuset)
    return files


def remove(cgroup: cgroups.Cgroup) -> None:
    """Take away what ``update`` made beyond the container's own groups (v1's cpuset), once empty."""
    if isinstance(cgroup, cgroups.V1):
        try:
            os.rmdir(_v1_cpuset(cgroup))
        except FileNotFoundError:
            pass


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)
