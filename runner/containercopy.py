"""``cp``'s container side: a path looked up, a tar of it written, a tar unpacked into a directory,
always by a process whose root is the container's, so that every path and symlink resolves inside
it, as the container sees it (never on the host).

A running container: a fork joins PID 1's mount namespace (and its user namespace, rootless) and
its cgroup (its device list applies); its volumes and binds are there. A stopped one: its union is
mounted read-write at its ``merged`` dir for the copy, under the supervisor's lock (no start
meanwhile), and a fork chroots into it; volumes are not mounted then. Rootless, that mount is made
as a start makes it, in a user namespace mapped as the container's (owners the user cannot give
go in xattrs), and the fork joins that namespace and its mount namespace before the chroot.

Tars: what is read is PAX, owners and modes as the container has them, no user or group names
looked up; what is unpacked is checked as tarfile's ``tar`` filter checks (no absolute names, no
``..``, no links out of the directory), owners 0:0 unless the archive's are kept (``cp -a``).

*Caveats*: a stopped container's volumes are not copied from or into.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from . import cgroups, userns
from . import syscalls as sc
from .containers import Container
from .errors import ContainerConflict, RunnerError
from .mounts import ImageMounts
from .volumemounts import LAYER


class CopyError(RunnerError):
    pass


def _entry(path: str, arcname: str) -> tarfile.TarInfo:
    """A TarInfo from lstat alone (no passwd lookups: the container's /etc is not ours to trust)."""
    st = os.lstat(path)
    info = tarfile.TarInfo(arcname)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = int(st.st_mtime)
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
    elif stat.S_ISREG(st.st_mode):
        info.type, info.size = tarfile.REGTYPE, st.st_size
    elif stat.S_ISFIFO(st.st_mode):
        info.type = tarfile.FIFOTYPE
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    else:
        raise OSError(f"{path}: a socket cannot be archived")
    return info


def write_tar(path: str, arcname: str, out: int) -> None:
    """A tar of ``path`` (its tree, symlinks not followed; hard links kept) to the fd ``out``, with
    ``path`` itself named ``arcname`` ("." : its contents at the top)."""
    seen: dict[tuple[int, int], str] = {}
    with os.fdopen(os.dup(out), "wb") as f, tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as tar:

        def add(src: str, name: str) -> None:
            info = _entry(src, name)
            if info.isdir():
                if name != ".":  # (".": the contents alone, the directory's own mode and owner not)
                    tar.addfile(info)
                for child in sorted(os.listdir(src)):
                    add(os.path.join(src, child), child if name == "." else f"{name}/{child}")
            elif info.isreg():
                st = os.lstat(src)
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen:
                    info.type, info.linkname, info.size = tarfile.LNKTYPE, seen[key], 0
                    tar.addfile(info)
                    return
                seen[key] = name
                with open(src, "rb", opener=lambda p, fl: os.open(p, fl | os.O_NOFOLLOW)) as data:
                    tar.addfile(info, data)
            else:
                tar.addfile(info)

        add(path, arcname)


def read_tar(
    directory: str, source: int, keep_owners: bool, rename: Callable[[str], str] | None = None, host: bool = False
) -> None:
    """Unpack the tar read from the fd ``source`` into ``directory`` (which must be one); the top
    name of each entry may be changed by ``rename``. Every entry must land inside ``directory``
    (tarfile's ``tar`` filter, checked here whatever the Python: no absolute name, no ``..``, no
    link or path through a link that leads out); owners 0:0 unless ``keep_owners``. ``host``: this
    is the host's side (a copy out of a container): no device node, no setuid or setgid bit."""
    base = os.path.realpath(directory)
    with os.fdopen(os.dup(source), "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
            if rename is not None:
                member.name = rename(member.name)
                if member.islnk():
                    member.linkname = rename(member.linkname)
            _check(member, base)
            if host and (member.ischr() or member.isblk()):
                raise OSError(f"{member.name}: refused: a device node (copied out of a container onto the host)")
            if host:
                member.mode &= ~0o6000
            if not keep_owners:
                member.uid = member.gid = 0
            member.uname = member.gname = ""
            member.mode &= 0o7777
            tar.extract(member, base, set_attrs=True, numeric_owner=True, **_NO_FILTER)


_NO_FILTER: dict[str, Any] = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}  # (_check)


def _check(member: tarfile.TarInfo, base: str) -> None:
    name = member.name
    if name.startswith("/") or ".." in name.split("/"):
        raise OSError(f"{name}: refused: a name outside the destination")
    if not _inside(os.path.realpath(os.path.join(base, os.path.dirname(name))), base):
        raise OSError(f"{name}: refused: a path through a link out of the destination")
    if member.issym():
        target = os.path.join(base, os.path.dirname(name), member.linkname)
        if member.linkname.startswith("/") or not _inside(os.path.normpath(target), base):
            raise OSError(f"{name}: refused: a link out of the destination ({member.linkname})")
    if member.islnk() and (member.linkname.startswith("/") or ".." in member.linkname.split("/")):
        raise OSError(f"{name}: refused: a hard link out of the destination")


def _inside(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


def describe(path: str) -> dict[str, object]:
    """What ``cp`` needs to know of a path (inside the root this process has): exists, dir, file."""
    try:
        st = os.stat(path) if os.path.exists(path) else os.lstat(path)  # (a dangling link: itself)
    except FileNotFoundError:
        return {"exists": False, "parent": os.path.isdir(os.path.dirname(path.rstrip("/")) or "/")}
    except NotADirectoryError:
        return {"exists": False, "parent": False}
    return {"exists": True, "dir": stat.S_ISDIR(st.st_mode)}


# -- in the container ---------------------------------------------------------------------------------
def run_inside(
    root: str, container: Container, body: Callable[[], None], meanwhile: Callable[[], None] | None = None
) -> None:
    """Run ``body`` in a fork whose root is the container's (see the module's doc), and
    ``meanwhile`` here while it runs (the other end of its pipes). ``CopyError`` with the body's
    message if it fails."""
    state = container.state()
    if state.get("Running"):
        _forked(lambda: _enter_running(container, state["Pid"]), body, meanwhile)
        return
    with _mounted(root, container) as (merged, holder):

        def enter() -> None:
            if holder:
                userns.joiner(holder)()
            os.chroot(merged)
            os.chdir("/")

        _forked(enter, body, meanwhile)


def _enter_running(container: Container, pid: int) -> None:
    procs = cgroups.load(container.config["Cgroup"]["Version"], container.id, pid=pid).procs_files()
    joined = [os.open(p, os.O_WRONLY | os.O_CLOEXEC) for p in procs]  # (before the host's cgroupfs is out of sight)
    own_user = os.stat(f"/proc/{pid}/ns/user").st_ino == os.stat("/proc/self/ns/user").st_ino
    fds = [
        os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC) for ns in ([] if own_user else ["user"]) + ["mnt"]
    ]
    for fd in fds:
        sc.setns(fd)
        os.close(fd)
    for fd in joined:
        os.write(fd, b"0")
        os.close(fd)
    os.chdir("/")


def _forked(enter: Callable[[], object], body: Callable[[], None], meanwhile: Callable[[], None] | None) -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            enter()
            body()
            code = 0
        except BaseException as e:  # (a fork: nothing of the parent's may run here)
            message = getattr(e, "strerror", None) or str(e)
            if isinstance(e, OSError) and e.filename:
                message = f"{e.filename}: {message}"
            try:
                os.write(w, message.encode()[:4000])
            except OSError:
                pass
        finally:
            os._exit(code)
    os.close(w)
    try:
        if meanwhile is not None:
            meanwhile()
    finally:
        with os.fdopen(r, "rb") as pipe:
            message = pipe.read().decode(errors="replace")
        _, status = os.waitpid(pid, 0)
    if status != 0:
        raise CopyError(message or "the copy failed")


@contextmanager
def _mounted(root: str, container: Container) -> Iterator[tuple[str, int]]:
    """A stopped container's union, read-write at its ``merged`` dir, for the block: (that dir,
    0 as root; rootless, the pid of the process whose user and mount namespaces it is mounted in)."""
    from unionfs.mount import fork_serve

    if (m := ImageMounts(root).of_container(container.id)) is not None:
        raise ContainerConflict(f"container {container.name} is mounted at {m.mountpoint}: strata umount it first")
    rootless = os.geteuid() != 0
    with container.claimed(), _namespaces() if rootless else nullcontext(0) as holder:
        merged = container.path("merged")
        lowers = [d for d in (container.path("init"), container.path(LAYER)) if os.path.isdir(d)]
        # rootless, as for a start: mounted as root of a namespace mapped as the container's, owners in xattrs
        options = ["allow_other", "xattr_permissions=2"] if rootless else []
        options.append("metacopy=on")  # as its supervisor mounts it (commit and export read the records)
        pid, ready = fork_serve(
            merged,
            [*lowers, *container.config["LowerDirs"]],
            container.path("upper"),
            container.path("work"),
            options,
            parent_death=signal.SIGTERM,
            enter=userns.joiner(holder) if holder else None,
        )
        with os.fdopen(ready, "rb") as pipe:
            message = pipe.read().decode(errors="replace")
        if message != "ok":
            os.waitpid(pid, 0)
            raise RunnerError(f"cannot mount container {container.name}: {message or 'the union daemon died'}")
        try:
            yield merged, holder
        finally:
            if holder:
                os.kill(pid, signal.SIGTERM)  # (the mount is the namespace's: the daemon unmounts it)
            else:
                sc.umount2(merged, sc.MNT_DETACH)
            os.waitpid(pid, 0)


@contextmanager
def _namespaces() -> Iterator[int]:
    """A process in a user namespace mapped as a rootless container's and in a mount namespace
    of its own, for the block (its pid); it exits after."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for fd in {int(n) for n in os.listdir("/proc/self/fd")} - {0, 1, 2, ready_w, done_r}:
                try:  # (the copy's pipes among them: their readers wait for EOF)
                    os.close(fd)
                except OSError:
                    pass
            uids, gids = userns.mappings(os.getuid(), os.getgid())
            userns.enter({"linux": {"uidMappings": uids, "gidMappings": gids}})
            sc.unshare(sc.CLONE_NEWNS)
            os.write(ready_w, b"ok")
            os.read(done_r, 1)  # (EOF: the block is over)
            code = 0
        except BaseException as e:  # (a fork: nothing of the parent's may run here)
            try:
                os.write(ready_w, (getattr(e, "strerror", None) or str(e)).encode()[:4000])
            except OSError:
                pass
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(done_r)
    try:
        message = os.read(ready_r, 4000).decode(errors="replace")  # (one write: "ok", or why not)
        os.close(ready_r)
        if message != "ok":
            raise RunnerError(f"cannot enter the container's user namespace: {message or 'the process died'}")
        yield pid
    finally:
        os.close(done_w)
        os.waitpid(pid, 0)


def lookup(root: str, container: Container, path: str) -> dict[str, object]:
    """``describe`` of ``path`` in the container."""
    r, w = os.pipe()
    found: list[bytes] = []

    def body() -> None:
        os.write(w, json.dumps(describe(path)).encode())

    def meanwhile() -> None:
        os.close(w)
        with os.fdopen(r, "rb") as f:
            found.append(f.read())

    run_inside(root, container, body, meanwhile)
    return dict(json.loads(found[0]))
