"""What a container's processes may do, from its record: the capability set (Docker's default set,
``--cap-add``/``--cap-drop`` and ``--privileged`` applied as moby's ``TweakCapabilities`` does:
``ALL`` in either list, names in any case with or without ``CAP_``, bounded by what the running
kernel knows) and no_new_privs (``--security-opt no-new-privileges``: off by default, as Docker's,
so that setuid programs such as sudo work). Names only: the init turns them into bits."""

from __future__ import annotations

from ..errors import RunnerError

TYPE_CHECKING = False
if TYPE_CHECKING:  # (``typing`` is ~10 ms of a strata-oci create's start-up)
    from typing import Any

# linux/capability.h, in bit order
NAMES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
]
ALL = "ALL"


def last_cap() -> int:
    """The highest capability bit the running kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return len(NAMES) - 1


def _bounding() -> int:
    """This process's bounding set: what it can give at all (root in a container of its own, or on a
    host that takes some away, lacks a few)."""
    try:
        with open("/proc/self/status") as f:
            return int(next(line.split()[1] for line in f if line.startswith("CapBnd:")), 16)
    except (OSError, StopIteration, ValueError):
        return (1 << len(NAMES)) - 1


def all_caps() -> list[str]:
    """Every capability this kernel has and this process may give (a privileged container's set)."""
    bounding = _bounding()
    return [name for bit, name in enumerate(NAMES[: last_cap() + 1]) if bounding & (1 << bit)]


def normalize(names: list[str]) -> list[str]:
    """Docker's CLI normalisation (``EffectiveCapAddCapDrop``'s half): upper case, ``CAP_`` added,
    ``ALL`` kept as it is, duplicates dropped, sorted. Checked: an unknown name is Docker's daemon's
    ``unknown capability: "CAP_X"``."""
    out = set()
    for name in names:
        name = name.strip().upper()
        if name != ALL and not name.startswith("CAP_"):
            name = "CAP_" + name
        if name != ALL and name not in NAMES:
            raise RunnerError(f'unknown capability: "{name}"')
        out.add(name)
    return [ALL] if ALL in out else sorted(out)


def tweak(basics: list[str], add: list[str], drop: list[str], privileged: bool) -> list[str]:
    """moby's TweakCapabilities: privileged gets every one; ``ALL`` added is everything but what is
    dropped; ``ALL`` dropped is only what is added; else the defaults less ``drop`` plus ``add``.
    An added capability wins over the same one dropped (Docker's CLI removes it from the drops)."""
    known = all_caps()
    if privileged:
        return known
    drop = [c for c in drop if c not in add or c == ALL]
    if ALL in add:
        caps = [c for c in known if c not in drop]
    elif ALL in drop:
        caps = list(add)
    else:
        caps = [c for c in basics if c not in drop] + [c for c in add if c not in basics]
    return [c for c in caps if c in known]


def of_container(config: dict[str, Any], defaults: list[str]) -> list[str]:
    """The capability set of a container from its record (``HostConfig``'s ``CapAdd``, ``CapDrop``
    and ``Privileged``; a record made before these existed has the defaults)."""
    hc = config.get("HostConfig") or {}
    return tweak(defaults, list(hc.get("CapAdd") or []), list(hc.get("CapDrop") or []), bool(hc.get("Privileged")))


def no_new_privileges(security_opt: list[str] | None) -> bool:
    """``--security-opt no-new-privileges`` (also ``=true``, ``:true``; ``=false`` turns it off
    again), the last one given winning, as Docker's daemon reads them."""
    on = False
    for option in security_opt or []:
        key, sep, value = option.partition("=" if "=" in option else ":")
        if key == "no-new-privileges":
            on = not sep or value.lower() in ("true", "1")
    return on
