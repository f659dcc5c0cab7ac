"""Two ways to drive the union filesystem with one behaviour suite:

  ``OpsClient``   calls the ``UnionFS`` handlers directly (no mount, no kernel);
  ``MountClient`` uses ordinary syscalls on a real mount served by ``python -m unionfs`` in a child
                  process (cleaned up by PID and exact mountpoint), on our patched pyfuse3 and on a
                  stock one (``daemon``, ``stock_pyfuse3``).

Both expose the same async, path-based methods and raise ``OSError`` with the errno the caller would
see. Also: ``make_layer`` builds a layer dir from a dict, ``mounted`` runs a real mount.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

import pyfuse3
import pytest
import stock_pyfuse3
from helpers import snapshot

from unionfs import mountinfo
from unionfs.fs import UnionFS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_libc = ctypes.CDLL(None, use_errno=True)
WHITEOUT = object()  # a .wh. file for this name
OPAQUE = object()  # this directory is opaque (.wh..wh..opq)


def make_layer(base: str, spec: dict[str, Any]) -> str:
    """``{"etc/hostname": "a\\n", "old": WHITEOUT, "var/": OPAQUE, "d/": None, "l": ("symlink", "t")}``."""
    os.makedirs(base, exist_ok=True)
    for name, value in spec.items():
        path = os.path.join(base, name.rstrip("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if value is WHITEOUT:
            open(os.path.join(os.path.dirname(path), ".wh." + os.path.basename(path)), "w").close()
        elif name.endswith("/"):
            os.makedirs(path, exist_ok=True)
            if value is OPAQUE:
                open(os.path.join(path, ".wh..wh..opq"), "w").close()
        elif isinstance(value, tuple) and value[0] == "symlink":
            os.symlink(value[1], path)
        elif isinstance(value, tuple) and value[0] == "link":
            os.link(os.path.join(base, value[1]), path)
        else:
            with open(path, "wb") as f:
                f.write(value.encode() if isinstance(value, str) else value)
    return base


def _path(first: str) -> str:
    """``first``, then the PYTHONPATH this test run has (a pyfuse3 built elsewhere, say)."""
    return os.pathsep.join(p for p in (first, os.environ.get("PYTHONPATH", "")) if p)


def python_child(script: str, *args: str, prefix: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (``python -c``) with this checkout first on its path, ``prefix`` before the
    interpreter (``unshare -Urm``, say); its output as text."""
    return subprocess.run(
        [*prefix, sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": _path(REPO)},
        timeout=120,
    )


def is_mounted(path: str) -> bool:
    return bool(mountinfo.mounts_at(os.path.abspath(path)))


@contextmanager
def mounted(
    mountpoint: str,
    lowers: list[str],
    upper: str | None = None,
    work: str | None = None,
    extra: str = "",
    python: Sequence[str] = (sys.executable,),
    pythonpath: str = REPO,
) -> Iterator[subprocess.Popen[bytes]]:
    """Serve a real mount in a child process; unmount and reap it afterwards, whatever happens.
    ``python`` is the command that runs the interpreter (``setpriv ... python3`` for another user)."""
    opt = "lowerdir=" + ":".join(lowers) + (f",upperdir={upper},workdir={work}" if upper else "") + extra
    r, w = os.pipe()
    proc = subprocess.Popen(
        [*python, "-m", "unionfs", "-f", "--ready-fd", str(w), "-o", opt, mountpoint],
        pass_fds=(w,),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": _path(pythonpath)},
    )
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        ready = pipe.read()
    try:
        assert ready == b"ok", ready
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if is_mounted(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", mountpoint], check=False)
        assert not is_mounted(mountpoint)


@dataclass(frozen=True)
class Daemon:
    """The interpreter a mount's daemon runs on, and what its pyfuse3 gives unionfs."""

    name: str  # "patched" (this suite's venv: pyfuse3 with unionfs/patches), "stock", "no-killpriv-v2"
    python: tuple[str, ...]
    pyfuse3: stock_pyfuse3.Features


# ``python -m unionfs`` on our pyfuse3 as on a libfuse other than the 3.14 that 0004's hooks were
# written for: init() installs none (``mounted`` appends ``-m unionfs ARGS``, which this drops)
_WITHOUT_KILLPRIV_V2 = (
    "import runpy, sys, pyfuse3; pyfuse3._killpriv_v2_libfuse = lambda version: False; "
    "del sys.argv[1:3]; runpy.run_module('unionfs', run_name='__main__', alter_sys=True)"
)


def daemon_on(name: str) -> Daemon:
    if name == "stock":
        python = stock_pyfuse3.python()
        return Daemon(name, (python,), stock_pyfuse3.features(python))
    found = stock_pyfuse3.features(sys.executable)
    if name == "no-killpriv-v2":
        return Daemon(name, (sys.executable, "-c", _WITHOUT_KILLPRIV_V2), replace(found, killpriv_v2=False))
    assert name == "patched", name
    return Daemon(name, (sys.executable,), found)


@pytest.fixture(params=["patched", "stock"])
def daemon(request: Any) -> Daemon:
    """Each test that takes it runs twice: its mounts served on our pyfuse3, then on a stock one."""
    return daemon_on(request.param)


class MountClient:
    kind = "mount"

    def __init__(self, root: str, daemon: Daemon | None = None) -> None:
        self.root = root
        self.daemon = daemon or daemon_on("patched")

    def p(self, path: str) -> str:
        return os.path.join(self.root, path)

    async def write(
        self, path: str, data: bytes, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC, offset: int | None = None
    ) -> None:
        fd = os.open(self.p(path), flags, 0o644)
        try:
            if offset is None:
                os.write(fd, data)
            else:
                os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    async def read(self, path: str, size: int = -1, offset: int = 0) -> bytes:
        with open(self.p(path), "rb") as f:
            f.seek(offset)
            return f.read(size)

    async def stat(self, path: str) -> os.stat_result:
        return os.lstat(self.p(path))

    async def listdir(self, path: str = "") -> list[str]:
        return sorted(os.listdir(self.p(path)))

    async def mkdir(self, path: str, mode: int = 0o755) -> None:
        os.mkdir(self.p(path), mode)

    async def listdir_all(self, path: str = "") -> list[tuple[str, int]]:
        """Every (name, inode number) readdir lists, "." and ".." too, in its order (``ls -a``)."""
        out = subprocess.run(
            ["ls", "-a1fi", "--quoting-style=literal", self.p(path)], check=True, capture_output=True, text=True
        ).stdout
        return [(name, int(ino)) for ino, name in (line.split(maxsplit=1) for line in out.splitlines())]

    async def rmdir(self, path: str) -> None:
        os.rmdir(self.p(path))

    async def unlink(self, path: str) -> None:
        os.unlink(self.p(path))

    async def rename(self, src: str, dst: str) -> None:
        os.rename(self.p(src), self.p(dst))

    async def symlink(self, target: str, path: str) -> None:
        os.symlink(target, self.p(path))

    async def readlink(self, path: str) -> str:
        return os.readlink(self.p(path))

    async def link(self, src: str, dst: str) -> None:
        os.link(self.p(src), self.p(dst), follow_symlinks=False)  # as ln: a symlink is linked itself

    async def chmod(self, path: str, mode: int) -> None:
        os.chmod(self.p(path), mode)

    async def chown(self, path: str, uid: int, gid: int) -> None:
        os.chown(self.p(path), uid, gid, follow_symlinks=False)

    async def utime(self, path: str, ns: tuple[int, int]) -> None:
        os.utime(self.p(path), ns=ns, follow_symlinks=False)

    async def truncate(self, path: str, size: int) -> None:
        os.truncate(self.p(path), size)

    async def fallocate(self, path: str, mode: int, offset: int, length: int) -> None:
        fd = os.open(self.p(path), os.O_RDWR)
        try:
            if _libc.fallocate(fd, mode, ctypes.c_long(offset), ctypes.c_long(length)) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), path)
        finally:
            os.close(fd)

    async def setxattr(self, path: str, key: str, value: bytes) -> None:
        os.setxattr(self.p(path), key, value, follow_symlinks=False)

    async def getxattr(self, path: str, key: str) -> bytes:
        return os.getxattr(self.p(path), key, follow_symlinks=False)

    async def listxattr(self, path: str) -> list[str]:
        return sorted(os.listxattr(self.p(path), follow_symlinks=False))

    async def mkfifo(self, path: str) -> None:
        os.mkfifo(self.p(path), 0o640)

    async def exists(self, path: str) -> bool:
        return os.path.lexists(self.p(path))


class _Token:
    def __init__(self) -> None:
        self.entries: list[tuple[bytes, int]] = []


class OpsClient:
    """Path operations done by calling the handlers, as the kernel would (lookup, then the op)."""

    kind = "ops"

    def __init__(self, fs: Any) -> None:
        self.fs = fs
        self.ctx = SimpleNamespace(uid=os.geteuid(), gid=os.getegid(), pid=os.getpid(), umask=0o022)

    async def _ino(self, path: str) -> int:
        ino = pyfuse3.ROOT_INODE
        for part in [p for p in path.split("/") if p]:
            attr = await self._call(self.fs.lookup, ino, os.fsencode(part), self.ctx)
            if attr.st_ino == 0:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
            ino = attr.st_ino
        return ino

    async def _parent(self, path: str) -> tuple[int, bytes]:
        head, _, tail = path.rpartition("/")
        return await self._ino(head), os.fsencode(tail)

    @staticmethod
    async def _call(fn: Any, *args: Any) -> Any:
        try:
            return await fn(*args)
        except pyfuse3.FUSEError as e:
            raise OSError(e.errno, os.strerror(e.errno)) from None

    async def _open(self, path: str, flags: int, mode: int = 0o644) -> tuple[int, int]:
        """(inode, file handle), as the kernel opens: create, or open and then setattr for O_TRUNC."""
        try:
            ino = await self._ino(path)
        except FileNotFoundError:
            if not flags & os.O_CREAT:
                raise
            parent, name = await self._parent(path)
            try:
                info, attr = await self._call(self.fs.create, parent, name, mode, flags, self.ctx)
            except OSError as e:
                if e.errno != errno.ENOSYS:
                    raise
                # the kernel falls back to MKNOD, then opens (with no OPEN sent: the fh is the inode)
                attr = await self._call(self.fs.mknod, parent, name, stat.S_IFREG | mode, 0, self.ctx)
                return attr.st_ino, attr.st_ino
            return attr.st_ino, int(info.fh)
        if flags & os.O_CREAT and flags & os.O_EXCL:
            raise FileExistsError(errno.EEXIST, "File exists", path)
        try:
            fh = int((await self._call(self.fs.open, ino, flags & ~os.O_CREAT, self.ctx)).fh)
        except OSError as e:
            if e.errno != errno.ENOSYS or not self.fs.enable_no_open:
                raise
            fh = ino  # the kernel takes ENOSYS for "no OPEN needed": reads and writes then carry the inode
        if flags & os.O_TRUNC:  # without atomic_o_trunc the kernel sends a setattr(size=0) after the open
            await self._setattr(ino, size=0)
        return ino, fh

    async def _setattr(self, ino: int, fh: int | None = None, **values: Any) -> None:
        attr = pyfuse3.EntryAttributes()
        fields = SimpleNamespace(
            update_atime=False,
            update_mtime=False,
            update_ctime=False,
            update_mode=False,
            update_uid=False,
            update_gid=False,
            update_size=False,
        )
        for key, value in values.items():
            if key == "size":
                attr.st_size, fields.update_size = value, True
            elif key == "mode":
                attr.st_mode, fields.update_mode = value, True
            elif key == "uid":
                attr.st_uid, fields.update_uid = value, True
            elif key == "gid":
                attr.st_gid, fields.update_gid = value, True
            elif key == "times":
                attr.st_atime_ns, attr.st_mtime_ns = value
                fields.update_atime = fields.update_mtime = True
        await self._call(self.fs.setattr, ino, attr, fields, fh, self.ctx)

    async def write(
        self, path: str, data: bytes, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC, offset: int | None = None
    ) -> None:
        ino, fh = await self._open(path, flags)
        try:
            if offset is None:
                offset = (await self._call(self.fs.getattr, ino, self.ctx)).st_size if flags & os.O_APPEND else 0
            await self._call(self.fs.write, fh, offset, data)
        finally:
            await self._call(self.fs.release, fh)

    async def read(self, path: str, size: int = -1, offset: int = 0) -> bytes:
        ino, fh = await self._open(path, os.O_RDONLY)
        try:
            if size < 0:
                size = (await self._call(self.fs.getattr, ino, self.ctx)).st_size
            return bytes(await self._call(self.fs.read, fh, offset, size))
        finally:
            await self._call(self.fs.release, fh)

    async def stat(self, path: str) -> os.stat_result:
        attr = await self._call(self.fs.getattr, await self._ino(path), self.ctx)
        return os.stat_result(
            (
                attr.st_mode,
                attr.st_ino,
                0,
                attr.st_nlink,
                attr.st_uid,
                attr.st_gid,
                attr.st_size,
                attr.st_atime_ns // 10**9,
                attr.st_mtime_ns // 10**9,
                attr.st_ctime_ns // 10**9,
            )
        )

    async def listdir(self, path: str = "") -> list[str]:
        ino = await self._ino(path)
        opened = await self._call(self.fs.opendir, ino, self.ctx)
        fh = opened if isinstance(opened, int) else opened.fh  # a FileInfo where listings are cached
        token = _Token()
        original = pyfuse3.readdir_reply

        def reply(tok: _Token, name: bytes, attr: Any, next_id: int) -> bool:
            tok.entries.append((name, next_id))
            return True

        pyfuse3.readdir_reply = reply  # the real one needs a kernel buffer
        try:
            await self._call(self.fs.readdir, fh, 0, token)
        finally:
            pyfuse3.readdir_reply = original
            await self._call(self.fs.releasedir, fh)
        return sorted(os.fsdecode(n) for n, _ in token.entries if n not in (b".", b".."))  # as os.listdir

    async def listdir_all(self, path: str = "") -> list[tuple[str, int]]:
        """Every (name, inode number) readdir lists, "." and ".." too, in its order."""
        ino = await self._ino(path)
        opened = await self._call(self.fs.opendir, ino, self.ctx)
        fh = opened if isinstance(opened, int) else opened.fh
        found: list[tuple[str, int]] = []
        original = pyfuse3.readdir_reply

        def reply(tok: _Token, name: bytes, attr: Any, next_id: int) -> bool:
            found.append((os.fsdecode(name), attr.st_ino))
            return True

        pyfuse3.readdir_reply = reply
        try:
            await self._call(self.fs.readdir, fh, 0, _Token())
        finally:
            pyfuse3.readdir_reply = original
            await self._call(self.fs.releasedir, fh)
        return found

    async def mkdir(self, path: str, mode: int = 0o755) -> None:
        parent, name = await self._parent(path)
        await self._call(self.fs.mkdir, parent, name, mode | stat.S_IFDIR, self.ctx)

    async def rmdir(self, path: str) -> None:
        parent, name = await self._parent(path)
        await self._call(self.fs.rmdir, parent, name, self.ctx)

    async def unlink(self, path: str) -> None:
        parent, name = await self._parent(path)
        await self._call(self.fs.unlink, parent, name, self.ctx)

    async def rename(self, src: str, dst: str) -> None:
        sp, sn = await self._parent(src)
        dp, dn = await self._parent(dst)
        await self._call(self.fs.rename, sp, sn, dp, dn, 0, self.ctx)

    async def symlink(self, target: str, path: str) -> None:
        parent, name = await self._parent(path)
        await self._call(self.fs.symlink, parent, name, os.fsencode(target), self.ctx)

    async def readlink(self, path: str) -> str:
        return os.fsdecode(await self._call(self.fs.readlink, await self._ino(path), self.ctx))

    async def link(self, src: str, dst: str) -> None:
        ino = await self._ino(src)
        parent, name = await self._parent(dst)
        await self._call(self.fs.link, ino, parent, name, self.ctx)

    async def chmod(self, path: str, mode: int) -> None:
        await self._setattr(await self._ino(path), mode=mode)

    async def chown(self, path: str, uid: int, gid: int) -> None:
        await self._setattr(await self._ino(path), uid=uid, gid=gid)

    async def utime(self, path: str, ns: tuple[int, int]) -> None:
        await self._setattr(await self._ino(path), times=ns)

    async def truncate(self, path: str, size: int) -> None:
        await self._setattr(await self._ino(path), size=size)

    async def fallocate(self, path: str, mode: int, offset: int, length: int) -> None:
        _, fh = await self._open(path, os.O_RDWR)
        try:
            await self._call(self.fs.fallocate, fh, mode, offset, length)
        finally:
            await self._call(self.fs.release, fh)

    async def setxattr(self, path: str, key: str, value: bytes) -> None:
        await self._call(self.fs.setxattr, await self._ino(path), key.encode(), value, self.ctx)

    async def getxattr(self, path: str, key: str) -> bytes:
        return bytes(await self._call(self.fs.getxattr, await self._ino(path), key.encode(), self.ctx))

    async def listxattr(self, path: str) -> list[str]:
        return sorted(os.fsdecode(k) for k in await self._call(self.fs.listxattr, await self._ino(path), self.ctx))

    async def mkfifo(self, path: str) -> None:
        parent, name = await self._parent(path)
        await self._call(self.fs.mknod, parent, name, stat.S_IFIFO | 0o640, 0, self.ctx)

    async def exists(self, path: str) -> bool:
        try:
            await self._ino(path)
            return True
        except FileNotFoundError:
            return False


@pytest.fixture(params=["ops", "ops-no-open", "mount", "mount-stock"])
def union(request: Any, tmp_path: Any) -> Iterator[Any]:
    """``union(*lower_specs, upper_spec=, prepare=)``: a client on a union of fresh layer dirs, driven
    four ways (handlers with and without open, a real mount on our pyfuse3 and on a stock one); the
    lowers must come out unchanged."""
    stack = ExitStack()

    def build(*lower_specs: dict[str, Any], upper_spec: dict[str, Any] | None = None, prepare: Any = None) -> Any:
        lowers = [make_layer(str(tmp_path / f"lower{i}"), spec) for i, spec in enumerate(lower_specs)]
        if prepare:
            prepare(lowers)
        upper = make_layer(str(tmp_path / "upper"), upper_spec or {})
        work = str(tmp_path / "work")
        os.makedirs(work)
        before = [snapshot(lower) for lower in lowers]
        # lower dirs are never modified, whatever the test did
        stack.callback(lambda: [snapshot(lower) for lower in lowers] == before or pytest.fail("a lower changed"))
        if request.param.startswith("ops"):
            # "ops-no-open": open answers ENOSYS, as a mount on our patched pyfuse3 does
            fs = UnionFS(lowers, upper, work, no_open=request.param == "ops-no-open")
            stack.callback(fs.close)
            client = OpsClient(fs)
        else:
            on = daemon_on("stock" if request.param == "mount-stock" else "patched")
            mnt = str(tmp_path / "mnt")
            os.makedirs(mnt)
            stack.enter_context(mounted(mnt, lowers, upper, work, python=on.python))
            client = MountClient(mnt, on)
        client.upper, client.lowers, client.work = upper, lowers, work
        return client

    yield build
    stack.close()


async def errno_of(coro: Any) -> int:
    """The errno an awaited operation failed with; 0 if it did not."""
    try:
        await coro
    except OSError as e:
        return e.errno
    return 0
