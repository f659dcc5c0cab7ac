"""The mount program as engines exec it: ``strata-unionfs`` as pip installs it (``bin/``'s launcher,
pointed at this checkout), and the processes of its mount server, found and stopped by pid."""

from __future__ import annotations

import os
import select
import sys

from unionfs_support import REPO


def console_script(directory: str) -> str:
    """``unionfs/bin/strata-unionfs`` as pip installs it from ``script-files`` (``#!python`` made this
    interpreter), with this checkout first on its path; its path."""
    with open(os.path.join(REPO, "unionfs", "bin", "strata-unionfs")) as f:
        text = f.read().replace("#!python\n", f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {REPO!r})\n", 1)
    path = os.path.join(directory, "strata-unionfs")
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return path


def server_pids(directory: str) -> list[int]:
    pids = []
    for name in os.listdir(directory) if os.path.isdir(directory) else []:
        if name.endswith(".pid"):
            with open(os.path.join(directory, name)) as f:
                pids.append(int(f.read()))
    return pids


def naming(text: str) -> list[int]:
    """The processes (but this one) whose command line names ``text`` (a directory of a test's)."""
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == os.getpid():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:  # gone meanwhile
            continue
        if os.fsencode(text) in cmdline:
            found.append(int(p))
    return found


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def stop(pids: list[int], timeout: float = 30) -> None:
    """SIGTERM each process (not our child) and wait, by pidfd, until it is gone."""
    for pid in pids:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            os.kill(pid, 15)
            if not select.select([pidfd], [], [], timeout)[0]:
                os.kill(pid, 9)
                select.select([pidfd], [], [], timeout)
        finally:
            os.close(pidfd)


def exited(pid: int, timeout: float = 30) -> bool:
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)
