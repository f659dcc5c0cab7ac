"""Who the container's command runs as, set in its process just before exec: the user and groups
(from the image's /etc/passwd and /etc/group, as runc reads them), the capability sets, the rlimits,
umask and OOM score of the config's ``process``. ``runner.init`` calls these in order; a failure is a
``SetupFailed`` with the exit code the runtime reports (125: the config, 126: cannot run)."""

from __future__ import annotations

import errno
import os
import resource

from . import syscalls as sc
from .oci import privileges
from .oci.spec import DEFAULT_CAPS as DOCKER_CAPS

TYPE_CHECKING = False
if TYPE_CHECKING:  # (``typing`` is ~10 ms of a strata-oci create's start-up)
    from typing import Any


class SetupFailed(Exception):
    """A set-up step of the container's process failed: str() says why, ``code`` is 125, 126 or 127."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


CAPS = {name: bit for bit, name in enumerate(privileges.NAMES)}  # linux/capability.h, by number
DEFAULT_CAPS = {name: CAPS[name] for name in DOCKER_CAPS}


def lookup_user(user: str) -> tuple[int, int, list[int], str]:
    """(uid, gid, supplementary gids, home) of ``uid[:gid[:gid,...]]`` or names, from the
    container's /etc/passwd and /etc/group (the third part: the config's additionalGids). The home
    is "/" for a user the passwd file does not list, as runc gives."""
    name, _, group = user.partition(":")
    group, _, additional = group.partition(":")

    def table(path: str) -> list[list[str]]:
        try:
            with open(path) as f:
                return [line.rstrip("\n").split(":") for line in f if line.strip() and not line.startswith("#")]
        except OSError:
            return []

    passwd = table("/etc/passwd")
    if name.isdigit():
        uid = int(name)
        row = next((r for r in passwd if len(r) > 3 and r[2] == name), None)
        gid = int(row[3]) if row else uid if not group else 0
    else:
        row = next((r for r in passwd if r and r[0] == name), None)
        if row is None or len(row) < 4:
            raise SetupFailed(126, f"unable to find user {name}: no matching entries in passwd file")
        uid, gid = int(row[2]), int(row[3])
    groups = table("/etc/group")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            g = next((r for r in groups if r and r[0] == group), None)
            if g is None:
                raise SetupFailed(126, f"unable to find group {group}: no matching entries in group file")
            gid = int(g[2])
    uname = row[0] if row else None
    extra = [int(r[2]) for r in groups if len(r) > 3 and uname and uname in r[3].split(",")]
    home = row[5] if row and len(row) > 5 and row[5] else "/"
    return uid, gid, extra + [int(g) for g in additional.split(",") if g.isdigit()], home


def cap_mask(names: list[str]) -> int:
    mask = 0
    for name in names:
        if name not in CAPS:
            raise SetupFailed(125, f"unknown capability {name!r}")
        mask |= 1 << CAPS[name]
    return mask


def drop_privileges(spec: dict[str, Any], user: tuple[int, int, list[int], str]) -> None:
    """Bounding set, ``user`` (``lookup_user``'s), then the capability sets (root keeps them
    through exec; anyone else's are recomputed empty by execve, as in Docker), no_new_privs."""
    caps = spec.get("capabilities") or {}
    keep = cap_mask(caps.get("bounding", list(DEFAULT_CAPS)))
    for cap in range(sc.last_cap() + 1):
        if not keep & (1 << cap):
            try:
                sc.prctl(sc.PR_CAPBSET_DROP, cap)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
    uid, gid, groups, _ = user
    death = sc.parent_death_signal()
    if not setgroups_denied():  # (a user namespace with one id: there are no groups to set)
        os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)
    if death:  # a change of uid clears it (prctl(2)): PID 1 must still die with runner.init
        sc.prctl(sc.PR_SET_PDEATHSIG, death)
    if uid == 0:
        sc.capset(cap_mask(caps.get("effective", list(DEFAULT_CAPS))) & keep)
    if spec.get("no_new_privs", True):
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)


def setgroups_denied() -> bool:
    try:
        with open("/proc/self/setgroups") as f:
            return f.read().strip() == "deny"
    except OSError:
        return False


# <asm-generic/resource.h>, by number (Python's resource module lacks some, RLIMIT_LOCKS among them)
_RLIMITS = {
    f"RLIMIT_{name}": number
    for number, name in enumerate(
        (
            "CPU",
            "FSIZE",
            "DATA",
            "STACK",
            "CORE",
            "RSS",
            "NPROC",
            "NOFILE",
            "MEMLOCK",
            "AS",
            "LOCKS",
            "SIGPENDING",
            "MSGQUEUE",
            "NICE",
            "RTPRIO",
            "RTTIME",
        )
    )
}


def set_limits(spec: dict[str, Any]) -> None:
    """The config's ``process.rlimits`` and ``oomScoreAdj``, while this process is still root."""
    for limit in spec.get("rlimits") or []:
        if limit.get("type") not in _RLIMITS:
            raise SetupFailed(125, f"unknown rlimit {limit.get('type')!r}")
        soft, hard = (resource.RLIM_INFINITY if int(v) >= 2**63 else int(v) for v in (limit["soft"], limit["hard"]))
        try:
            resource.setrlimit(_RLIMITS[limit["type"]], (soft, hard))  # (uint64 2**64-1: unlimited)
        except (OSError, ValueError) as e:
            raise SetupFailed(125, f"cannot set {limit['type']} to {limit['soft']}:{limit['hard']}: {e}") from None
    if spec.get("umask") is not None:
        os.umask(int(spec["umask"]))
    if spec.get("oom_score_adj") is not None:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(int(spec["oom_score_adj"])))
