"""strata as a throwaway unprivileged user (issue 17): what the ``rootless`` fixture sets up and removes.

The suite runs as root, from a checkout that may sit where no other user can go (``/root/...``), with a
``python3`` and a ``.venv`` that other users cannot run (pyenv under /root). So, for one session:

- **venv**: made with Debian's ``/usr/bin/python3`` in ``/var/tmp/strata-rootless-venv-<key>`` (0755,
  root's), holding pyfuse3 built from its source release with the series ``unionfs/patches/*.patch``
  (as the Makefile builds it) and strata's other dependencies. Built once per machine, under a lock,
  bounded in time; ``<key>`` hashes pyproject.toml, the patches and the Makefile's pyfuse3 version and
  label, so a change to any of them builds a new one.
- **code**: a fresh copy of ``store``, ``unionfs`` and ``runner`` (compiled) in a world-readable temp dir.
- **user**: ``strata-t<hex>`` with a 0700 home, a 0700 runtime dir (``XDG_RUNTIME_DIR``) and a 65536-id
  subuid/subgid range at an offset no other range uses.
- **/dev/fuse**, **/dev/net/tun** (pasta's): opened to others (0666, Debian's default) for the session, their
  exact modes put back after by the last of the sessions that run at once (``open_to_all``).

Teardown, whatever happened: SIGKILL every process whose uid is the user's or one of its subordinate
ids (by pidfd, waited for), unmount every mount at or below the user's dirs (exact paths from
/proc/self/mountinfo), delete the user (``userdel -r``) and its /etc/subuid and /etc/subgid lines (by
exact name), remove the temp dirs, restore /dev/fuse and /dev/net/tun.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import hashlib
import os
import pwd
import random
import re
import select
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from helpers import BuildSteps, Result

SYSTEM_PYTHON = "/usr/bin/python3"
CACHE_PARENT = "/var/tmp"
SESSION_PARENT = "/tmp"  # not $TMPDIR: that may be somewhere the user cannot traverse
PACKAGES = ("store", "unionfs", "runner")
BUILD_TIMEOUT = 900.0  # seconds for the whole venv build (a cold one takes about a minute)
RECIPE = "1"  # bump when the build steps below change: a new cache key
SUBID_COUNT = 65536
FUSE_DEVICE = "/dev/fuse"
TUN_DEVICE = "/dev/net/tun"  # pasta makes the tap device of a rootless container's network with it
COMMAND_TIMEOUT = 300.0

Log = Callable[[str], None]


class SetupError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------- venv


def _pyfuse3_version(repo: str) -> tuple[str, str]:
    """The Makefile's pyfuse3 version and the local label it installs it under (``3.5.0``, ``+strata.9``)."""
    with open(os.path.join(repo, "Makefile")) as f:
        text = f.read()
    version = re.search(r"^PYFUSE3\s*:=\s*(\S+)", text, re.M)
    label = re.search(r"SETUPTOOLS_SCM_PRETEND_VERSION=\$\(PYFUSE3\)(\+[\w.]+)", text)
    if version is None:
        raise SetupError("Makefile: no PYFUSE3 := VERSION line")
    return version.group(1), label.group(1) if label else "+strata"


def pyfuse3_patches(repo: str) -> list[str]:
    """The series the Makefile applies to pyfuse3's source, in its order (relative paths)."""
    folder = os.path.join("unionfs", "patches")
    return sorted(os.path.join(folder, n) for n in os.listdir(os.path.join(repo, folder)) if n.endswith(".patch"))


def cache_key(repo: str) -> str:
    digest = hashlib.sha256(f"recipe {RECIPE}\n".encode())
    for name in ("pyproject.toml", *pyfuse3_patches(repo)):
        with open(os.path.join(repo, name), "rb") as f:
            digest.update(name.encode() + b"\0" + f.read() + b"\0")
    digest.update("".join(_pyfuse3_version(repo)).encode())
    return digest.hexdigest()[:16]


def _dependencies(repo: str) -> list[str]:
    with open(os.path.join(repo, "pyproject.toml"), "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def _root_owned_dir(path: str) -> bool:
    st = os.lstat(path)
    return stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and not st.st_mode & 0o022


def make_readable(path: str) -> None:
    """Everyone may read every file and traverse every directory below ``path`` (nobody else may write)."""
    for dirpath, _dirs, files in os.walk(path):
        os.chmod(dirpath, (stat.S_IMODE(os.lstat(dirpath).st_mode) | 0o755) & ~0o022)
        for name in files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                extra = 0o555 if st.st_mode & 0o100 else 0o444
                os.chmod(p, (stat.S_IMODE(st.st_mode) | extra) & ~0o022)


def ensure_venv(repo: str, log: Log) -> str:
    """The cached venv for this checkout's dependencies and patch, built first if there is none."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        raise SetupError(f"{SYSTEM_PYTHON} is missing: apt-get install python3 python3-venv python3-dev")
    key = cache_key(repo)
    path = os.path.join(CACHE_PARENT, f"strata-rootless-venv-{key}")
    marker = os.path.join(path, ".strata-complete")
    # one builder at a time (another session may be building the same venv): its build is bounded
    lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(lock).st_uid != 0:
            raise SetupError(f"{path}.lock is not root's: remove it")
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.lexists(path) and not _root_owned_dir(path):
            raise SetupError(f"{path} is not a directory only root may write: remove it")
        if os.path.exists(marker):
            with open(marker) as f:
                if f.read().strip() == key:
                    log(f"rootless: reusing {path}")
                    return path
        if os.path.lexists(path):
            shutil.rmtree(path)  # a build that did not finish
        _build(repo, path, log)
        with open(marker, "w") as f:
            f.write(key + "\n")
        os.chmod(marker, 0o644)
        return path
    finally:
        os.close(lock)


def _build(repo: str, path: str, log: Log) -> None:
    started = time.monotonic()
    version, label = _pyfuse3_version(repo)
    log(
        f"rootless: building {path} with {SYSTEM_PYTHON}: pyfuse3 {version} + unionfs/patches, "
        f"{', '.join(_dependencies(repo))} (once per machine; at most {BUILD_TIMEOUT:.0f} s)"
    )
    b = BuildSteps("rootless venv build", BUILD_TIMEOUT, SetupError, log, deadline=started + BUILD_TIMEOUT)
    os.mkdir(path, 0o755)
    os.chmod(path, 0o755)
    b.run(
        [SYSTEM_PYTHON, "-m", "venv", path],
        hint=" (apt-get install python3-venv python3-dev: the Makefile's DEB_PACKAGES)",
    )
    python = os.path.join(path, "bin", "python")
    pip = [python, "-m", "pip", "-q", "--disable-pip-version-check", "--no-input"]
    with tempfile.TemporaryDirectory(prefix="strata-rootless-build-", dir=CACHE_PARENT) as work:
        cached = os.path.join(repo, "build", "pyfuse3", f"pyfuse3-{version}.tar.gz")
        if os.path.isfile(cached):  # the Makefile's download
            sdist = cached
        else:
            b.run([*pip, "download", "--no-deps", "--no-binary", ":all:", "-d", work, f"pyfuse3=={version}"])
            sdist = os.path.join(work, f"pyfuse3-{version}.tar.gz")
        b.run(["tar", "xzf", sdist, "-C", work, "--no-same-owner"])
        src = os.path.join(work, f"pyfuse3-{version}")
        for patch in pyfuse3_patches(repo):
            b.run(["patch", "-s", "-d", src, "-p1", "-i", os.path.join(repo, patch)])
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(src, "src", "pyfuse3", "__init__.c"))  # Cython writes it from the patched source
        b.run(
            [*pip, "install", "--no-deps", src],
            env={"SETUPTOOLS_SCM_PRETEND_VERSION": version + label},
            hint=" (needs gcc, pkg-config, libfuse3-dev, python3-dev: the Makefile's DEB_PACKAGES)",
        )
    b.run([*pip, "install", *_dependencies(repo)])
    b.run(
        [
            python,
            "-c",
            "import pyfuse3, trio, zstandard; "
            "assert hasattr(pyfuse3.FileInfo(), 'cache_readdir'), 'pyfuse3 is not the patched one'",
        ]
    )
    make_readable(path)
    log(f"rootless: built {path} in {time.monotonic() - started:.0f} s")


def copy_sources(repo: str, python: str) -> str:
    """A fresh, world-readable copy of the three packages (compiled, so that the user's commands need
    not write ``__pycache__``)."""
    dest = tempfile.mkdtemp(prefix="strata-rootless-src-", dir=SESSION_PARENT)
    try:
        for package in PACKAGES:
            shutil.copytree(
                os.path.join(repo, package),
                os.path.join(dest, package),
                symlinks=True,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            )
        # an optimisation only: a file that does not compile (mid-edit) fails in the tests, with its error
        subprocess.run(
            [python, "-m", "compileall", "-q", dest], check=False, capture_output=True, timeout=COMMAND_TIMEOUT
        )
        make_readable(dest)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest


# ---------------------------------------------------------------------------------------- the user

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8


def _subid_ranges() -> list[tuple[int, int]]:
    ranges = []
    for name in ("/etc/subuid", "/etc/subgid"):
        try:
            with open(name) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                ranges.append((int(parts[1]), int(parts[1]) + int(parts[2])))
    return ranges


def _free_subid_start() -> int:
    """A 65536-aligned start whose range overlaps none in /etc/subuid or /etc/subgid (random among the
    free ones below useradd's SUB_UID_MAX, so that two sessions at once hardly ever pick the same)."""
    used = _subid_ranges()
    slots = [n * SUBID_COUNT for n in range(16, 600_000_000 // SUBID_COUNT)]
    free = [s for s in slots if all(s + SUBID_COUNT <= a or s >= b for a, b in used)]
    if not free:
        raise SetupError("no free subordinate id range")
    return random.choice(free)


def _unescape_mountinfo(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_below(paths: list[str]) -> list[str]:
    """Mountpoints at or below any of ``paths`` in our mount namespace, deepest first."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _unescape_mountinfo(line.split()[4])
            if any(point == p or point.startswith(p.rstrip("/") + "/") for p in paths):
                found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def _umount(point: str) -> None:
    if _libc.umount2(os.fsencode(point), UMOUNT_NOFOLLOW) == 0:
        return
    if _libc.umount2(os.fsencode(point), UMOUNT_NOFOLLOW | MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot unmount {point}: {os.strerror(err)}")


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)


@dataclass
class RootlessUser:
    """A throwaway user; ``run`` and ``strata`` run commands as it, with a clean environment."""

    name: str
    uid: int
    gid: int
    home: str
    runtime_dir: str  # $XDG_RUNTIME_DIR (0700, the user's)
    zygote_dir: str  # $STRATA_ZYGOTE_DIR: made by strata itself (the launcher's default spot)
    subid_start: int
    subid_count: int
    venv: str
    src: str  # the copied packages: PYTHONPATH
    log: Log = field(repr=False, default=print)

    @property
    def python(self) -> str:
        return os.path.join(self.venv, "bin", "python")

    def environment(self) -> dict[str, str]:
        return {
            "HOME": self.home,
            "USER": self.name,
            "LOGNAME": self.name,
            "SHELL": "/bin/sh",
            "PATH": f"{self.venv}/bin:/usr/local/bin:/usr/bin:/bin",
            "XDG_RUNTIME_DIR": self.runtime_dir,
            "LANG": "C.UTF-8",
        }

    def run(
        self,
        *argv: str,
        input: bytes | str | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
        cwd: str | None = None,
        timeout: float = COMMAND_TIMEOUT,
    ) -> Result:
        """Run ``argv`` as the user (its own session: no controlling terminal of ours), umask 022."""
        data = input.encode() if isinstance(input, str) else input
        proc = subprocess.run(
            ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--", *argv],
            input=data,
            stdin=None if data is not None else subprocess.DEVNULL,
            capture_output=True,
            env={**self.environment(), **(env or {})},
            cwd=cwd or self.home,
            timeout=timeout,
            start_new_session=True,
            umask=0o022,
        )
        res = Result(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))
        if check and res.code != 0:
            raise AssertionError(f"{' '.join(argv)} as {self.name} failed ({res.code}): {res.err}")
        return res

    def strata(
        self,
        root: str,
        *args: str,
        input: bytes | str | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
    ) -> Result:
        """``python -m runner --root ROOT ARGS`` as the user, on the copied code (through its zygote)."""
        res = self.run(
            self.python,
            "-m",
            "runner",
            "--root",
            root,
            *args,
            input=input,
            check=False,
            env={"PYTHONPATH": self.src, "STRATA_ZYGOTE_DIR": self.zygote_dir, **(env or {})},
        )
        if check and res.code != 0:
            raise AssertionError(f"strata {' '.join(args)} as {self.name} failed ({res.code}): {res.err}")
        return res

    def make_dir(self, path: str, mode: int = 0o755) -> str:
        """A directory (and missing parents below the home) that the user owns."""
        missing = []
        p = path
        while not os.path.exists(p):
            missing.append(p)
            p = os.path.dirname(p)
        for d in reversed(missing):
            os.mkdir(d)
            os.chown(d, self.uid, self.gid)
            os.chmod(d, mode)
        return path

    def give(self, path: str) -> None:
        """Make the user own ``path`` and everything below it (links themselves, not their targets)."""
        os.lchown(path, self.uid, self.gid)
        for dirpath, dirs, files in os.walk(path):
            for name in dirs + files:
                os.lchown(os.path.join(dirpath, name), self.uid, self.gid)

    # ---- teardown

    def owns(self, pid: int) -> bool:
        try:
            status = _status(pid)
        except (FileNotFoundError, ProcessLookupError):
            return False
        if status.get("State", "").startswith("Z"):
            return False  # its parent reaps it (and it holds nothing)
        ids = [int(x) for x in status.get("Uid", "").split()]
        return any(i == self.uid or self.subid_start <= i < self.subid_start + self.subid_count for i in ids)

    def processes(self) -> list[int]:
        return [int(d) for d in os.listdir("/proc") if d.isdigit() and self.owns(int(d))]

    def kill_all(self) -> None:
        """SIGKILL every process of the user or of its subordinate ids (its zygotes, union daemons,
        containers), by pidfd, and wait until each is gone; again until none is left."""
        for _ in range(50):
            pids = self.processes()
            if not pids:
                return
            fds = []
            for pid in pids:
                try:
                    fd = os.pidfd_open(pid)
                except ProcessLookupError:
                    continue
                if self.owns(pid):  # still the process we found (the pidfd pins it)
                    with contextlib.suppress(ProcessLookupError):
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                    fds.append(fd)
                else:
                    os.close(fd)
            for fd in fds:
                select.select([fd], [], [], 10.0)  # readable once it has exited
                os.close(fd)
        raise RuntimeError(f"processes of {self.name} keep appearing: {self.processes()}")

    def unmount_all(self) -> None:
        for _ in range(10):  # mounts may be stacked
            points = mounts_below([self.home, self.runtime_dir])
            if not points:
                return
            for point in points:
                self.log(f"rootless: unmounting {point}, left by a test")
                _umount(point)
        raise RuntimeError(f"mounts left below {self.home}: {mounts_below([self.home, self.runtime_dir])}")


def _remove_subid_lines(name: str) -> None:
    for path in ("/etc/subuid", "/etc/subgid"):
        try:
            with open(path) as f:
                lines = f.read().splitlines(keepends=True)
        except FileNotFoundError:
            continue
        kept = [line for line in lines if line.split(":", 1)[0] != name]
        if kept != lines:
            st = os.stat(path)
            tmp = f"{path}.strata-{os.getpid()}"
            with open(tmp, "w") as f:
                f.writelines(kept)
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
            os.chown(tmp, st.st_uid, st.st_gid)
            os.replace(tmp, path)


DEVICE_STATE = "/run/strata-rootless-devices"  # a lock and the modes to put back, shared by sessions


@contextlib.contextmanager
def open_to_all(log: Log, device: str) -> Iterator[None]:
    """``device`` rw for everyone (Debian's default) for the session. Sessions may run at once (other
    checkouts' suites): each holds a shared lock while it needs the device; the first one notes the
    mode it found, and the last one to leave (it gets the lock exclusively) puts that mode back."""
    if not os.path.exists(device):
        yield
        return
    os.makedirs(DEVICE_STATE, mode=0o700, exist_ok=True)
    saved = os.path.join(DEVICE_STATE, device.strip("/").replace("/", "_"))
    lock = os.open(saved + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)  # (one per device)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        mode = stat.S_IMODE(os.stat(device).st_mode)
        if not os.path.exists(saved):  # no session has it open: what it is now is what to put back
            with open(saved, "w") as f:
                f.write(f"{mode:o}\n")
        if mode & 0o006 != 0o006:
            log(f"rootless: chmod 0666 {device} for the session (was {mode:04o})")
            os.chmod(device, 0o666)
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield
    finally:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.path.exists(saved):
                with open(saved) as f:
                    os.chmod(device, int(f.read(), 8))
                os.unlink(saved)
        except BlockingIOError:  # another session still needs it open: the last one puts it back
            pass
        finally:
            os.close(lock)


def _run_root(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def rootless_user(repo: str, log: Log = print) -> Iterator[RootlessUser]:
    """Everything in the module docstring, set up and removed again whatever happens in between."""
    if os.geteuid() != 0:
        raise SetupError("the rootless tests create a user: run them as root")
    for tool in ("useradd", "usermod", "userdel", "setpriv", "fusermount3", "newuidmap", "newgidmap"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            raise SetupError(f"{tool} is missing (apt-get install passwd util-linux fuse3 uidmap)")
    if not os.path.exists(FUSE_DEVICE):
        raise SetupError(f"{FUSE_DEVICE} is missing: FUSE is not available here")
    venv = ensure_venv(repo, log)
    errors: list[str] = []

    def attempt(what: str, step: Callable[[], object]) -> None:
        try:
            step()
        except Exception as e:  # every later step still runs; all failures are reported together
            errors.append(f"{what}: {e}")

    with contextlib.ExitStack() as stack:
        src = copy_sources(repo, os.path.join(venv, "bin", "python"))
        stack.callback(attempt, f"remove {src}", lambda: shutil.rmtree(src))
        stack.enter_context(open_to_all(log, FUSE_DEVICE))
        stack.enter_context(open_to_all(log, TUN_DEVICE))

        name = f"strata-t{random.randbytes(3).hex()}"
        home = f"/home/{name}"
        subid = _free_subid_start()
        created = _run_root(
            [
                "useradd",
                "--create-home",
                "--home-dir",
                home,
                "--shell",
                "/bin/sh",
                "--user-group",
                "--comment",
                "strata rootless tests",
                "-K",
                "SUB_UID_COUNT=0",
                "-K",
                "SUB_GID_COUNT=0",
                name,
            ]
        )
        if created.returncode != 0:
            raise SetupError(f"useradd {name} failed: {created.stderr.strip()}")

        def delete_user() -> None:
            _run_root(
                [
                    "usermod",
                    "--del-subuids",
                    f"{subid}-{subid + SUBID_COUNT - 1}",
                    "--del-subgids",
                    f"{subid}-{subid + SUBID_COUNT - 1}",
                    name,
                ]
            )
            gone = _run_root(["userdel", "-r", name])
            if gone.returncode not in (0, 12):  # 12: the home could not be removed (done below)
                forced = _run_root(["userdel", "-r", "-f", name])
                if forced.returncode not in (0, 6, 12):  # 6: no such user (any more)
                    raise RuntimeError(f"userdel {name}: {gone.stderr.strip()} / {forced.stderr.strip()}")
            _remove_subid_lines(name)
            if os.path.lexists(home):
                shutil.rmtree(home)

        stack.callback(attempt, f"delete user {name}", delete_user)
        entry = pwd.getpwnam(name)
        runtime = tempfile.mkdtemp(prefix=f"strata-rootless-run-{name}-", dir=SESSION_PARENT)
        user = RootlessUser(
            name=name,
            uid=entry.pw_uid,
            gid=entry.pw_gid,
            home=home,
            runtime_dir=runtime,
            zygote_dir=os.path.join(runtime, "strata"),
            subid_start=subid,
            subid_count=SUBID_COUNT,
            venv=venv,
            src=src,
            log=log,
        )
        # these run first (in reverse): processes, then mounts, then dirs; then the user goes
        stack.callback(attempt, f"remove {runtime}", lambda: shutil.rmtree(runtime))
        stack.callback(attempt, f"unmount below {home}", user.unmount_all)
        stack.callback(attempt, f"stop the processes of {name}", user.kill_all)
        os.chown(runtime, user.uid, user.gid)
        os.chmod(runtime, 0o700)
        os.chmod(home, 0o700)
        added = _run_root(
            [
                "usermod",
                "--add-subuids",
                f"{subid}-{subid + SUBID_COUNT - 1}",
                "--add-subgids",
                f"{subid}-{subid + SUBID_COUNT - 1}",
                name,
            ]
        )
        if added.returncode != 0:
            raise SetupError(f"usermod --add-subuids for {name} failed: {added.stderr.strip()}")
        log(f"rootless: user {name} (uid {user.uid}, subordinate ids {subid}+{SUBID_COUNT}), home {home}")
        yield user
    if errors:
        raise RuntimeError("rootless teardown: " + "; ".join(errors))
