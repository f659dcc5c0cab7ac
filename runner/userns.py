"""A rootless container's user namespace: which ids it maps, and writing the maps.

An ordinary user may map only its own uid and gid (with setgroups denied). With ranges in
``/etc/subuid`` and ``/etc/subgid``, the distribution's setuid ``newuidmap``/``newgidmap`` map more:
container 0 is the user, 1..N the user's range, as rootless podman maps them. Then the images'
other owners (``_apt``, ``www-data``...) exist inside the container and ``-u`` can name them.

The maps of a namespace must be written from outside it, by a process whose own namespace is its
parent's: ``newuidmap`` run in the new namespace would not get its setuid. ``enter`` forks that
process first, unshares, and lets it write the maps.
"""

from __future__ import annotations

import _signal  # (``signal``'s enums import ``enum``: ~5 ms of a strata-oci create)
import os
import pwd

from . import syscalls as sc

TYPE_CHECKING = False
if TYPE_CHECKING:  # (``typing`` is ~10 ms of a strata-oci create's start-up)
    from collections.abc import Callable
    from typing import Any

SUBUID, SUBGID = "/etc/subuid", "/etc/subgid"
Mapping = dict[str, int]  # {"containerID", "hostID", "size"}: runtime-spec's shape


def subid_range(path: str, uid: int) -> tuple[int, int] | None:
    """(first host id, count) of the first range ``path`` gives the user ``uid`` (by name or by
    number, as shadow's tools read it), or None."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = None
    try:
        with open(path) as f:
            for line in f:
                fields = line.strip().split(":")
                if len(fields) == 3 and fields[0] in (name, str(uid)) and fields[1].isdigit() and fields[2].isdigit():
                    if int(fields[2]) > 0:
                        return int(fields[1]), int(fields[2])
    except OSError:
        pass
    return None


def helpers() -> tuple[str, str] | None:
    """The paths of newuidmap and newgidmap, or None if either is missing."""
    import shutil  # (here: strata-oci create imports this module, and rootless is the rare case)

    found = [
        shutil.which(tool, path="/usr/bin:/bin:/usr/sbin:/sbin:" + os.environ.get("PATH", ""))
        for tool in ("newuidmap", "newgidmap")
    ]
    return (found[0], found[1]) if found[0] and found[1] else None


def mappings(uid: int, gid: int) -> tuple[list[Mapping], list[Mapping]]:
    """The uid and gid maps of a container run by ``uid``/``gid``: the user as 0, then its
    subordinate ranges where both exist and the helpers are installed; else the user alone."""
    users, groups = subid_range(SUBUID, uid), subid_range(SUBGID, uid)
    uids = [{"containerID": 0, "hostID": uid, "size": 1}]
    gids = [{"containerID": 0, "hostID": gid, "size": 1}]
    if users and groups and helpers():
        uids.append({"containerID": 1, "hostID": users[0], "size": users[1]})
        gids.append({"containerID": 1, "hostID": groups[0], "size": groups[1]})
    return uids, gids


def single_reason(uid: int) -> str | None:
    """Why a container of ``uid`` gets one id only (``mappings``), in a few words; None if it
    gets the user's ranges."""
    if helpers() is None:
        return "newuidmap and newgidmap are not installed (Debian's package uidmap)"
    if subid_range(SUBUID, uid) is None or subid_range(SUBGID, uid) is None:
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        return f"no subordinate ids for {name} in {SUBUID} and {SUBGID}"
    return None


def maps_id(maps: list[Mapping], inside: int) -> bool:
    """Does ``maps`` give the container id ``inside`` a host id?"""
    return any(m["containerID"] <= inside < m["containerID"] + m["size"] for m in maps)


def _own_only(maps: list[Mapping], own: int) -> bool:
    return len(maps) == 1 and maps[0].get("hostID") == own and maps[0].get("size") == 1


def enter(config: dict[str, Any]) -> None:
    """Unshare a user namespace and map it as ``linux.uidMappings``/``gidMappings`` say: the
    caller's own ids by itself, anything more through newuidmap/newgidmap. OSError with one line
    if that cannot be done (no helpers, ids the user is not given)."""
    linux = config.get("linux") or {}
    uids, gids = linux.get("uidMappings") or [], linux.get("gidMappings") or []
    uid, gid = os.getuid(), os.getgid()  # (after the unshare, until the maps exist, they read as 65534)
    if _own_only(uids, uid) and _own_only(gids, gid):
        sc.unshare(sc.CLONE_NEWUSER)
        for name, text in (
            ("setgroups", "deny"),
            ("uid_map", f"{uids[0].get('containerID', 0)} {uid} 1\n"),
            ("gid_map", f"{gids[0].get('containerID', 0)} {gid} 1\n"),
        ):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        return
    tools = helpers()
    if tools is None:
        raise OSError(0, "mapping more than your own uid and gid needs newuidmap and newgidmap (package uidmap)")
    go_r, go_w = os.pipe()
    err_r, err_w = os.pipe()
    mapper = os.fork()
    if mapper == 0:  # still in the parent namespace: writes our maps once we have unshared
        os.close(go_w)
        os.close(err_r)
        code = 1
        try:
            os.read(go_r, 1)
            code = _write_maps(os.getppid(), tools, uids, gids, err_w)
        finally:
            os._exit(code)
    os.close(go_r)
    os.close(err_w)
    try:
        sc.unshare(sc.CLONE_NEWUSER)
    except OSError:
        os.kill(mapper, _signal.SIGKILL)
        os.waitpid(mapper, 0)
        for fd in (go_w, err_r):
            os.close(fd)
        raise
    os.close(go_w)  # the mapper's go (EOF)
    message = b""
    while chunk := os.read(err_r, 4096):
        message += chunk
    os.close(err_r)
    _, status = os.waitpid(mapper, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise OSError(0, message.decode(errors="replace").strip() or "newuidmap failed")


def _write_maps(pid: int, tools: tuple[str, str], uids: list[Mapping], gids: list[Mapping], err_fd: int) -> int:
    import subprocess  # (here: see ``shutil`` above)

    for tool, maps in zip(tools, (uids, gids), strict=True):
        argv = [tool, str(pid)]
        for m in maps:
            argv += [str(m["containerID"]), str(m["hostID"]), str(m["size"])]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            os.write(err_fd, f"{os.path.basename(tool)}: {why}".encode())
            return 1
    return 0


def joiner(pid: int) -> Callable[[], None]:
    """What a rootless union daemon runs before it mounts: join the user and mount namespaces of
    the container's init ``pid`` (which made them), so that the mount is made as the container's
    root, where allow_other lets the container's other users in, and PID 1's root is a copy of it.
    (The daemon was started by the user who owns that namespace: it may join it.)"""

    def join() -> None:
        fds = [os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC) for ns in ("user", "mnt")]
        try:
            sc.setns(fds[0], sc.CLONE_NEWUSER)
            sc.setns(fds[1], sc.CLONE_NEWNS)
        finally:
            for fd in fds:
                os.close(fd)

    return join
