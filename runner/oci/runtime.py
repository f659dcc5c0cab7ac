"""The OCI runtime's lifecycle over a state dir, as runc keeps one: ``<root>/<id>/state.json`` and
``exec.fifo``. ``strata-oci`` (``cli.py``) is a thin face over it; nothing here prints.

    create   the bundle's config checked, its cgroup made, PID 1 spawned by this very process
             (``runner.init.spawn``) and set up to the last step before exec, where it waits on
             ``exec.fifo``; returns once it waits there. This process then ends, so PID 1 goes to
             the caller's subreaper (conmon, containerd's shim), as runc's does.
    start    opens the fifo: PID 1 writes one byte and execs; the fifo goes
    state    derived, never stored (runc's ``refreshState``): stopped if PID 1 (pid and start time)
             is gone or a zombie, created while ``exec.fifo`` exists, paused if frozen, else running
    kill     a signal to PID 1 (``--all``: to every process of its cgroup)
    delete   a stopped container's cgroup and dir; a created one is killed first, a running one only
             with ``force``; ``force`` on a missing one succeeds
    exec     a process forked into PID 1's namespaces and cgroup (``runner.init.join``)
    update   new limits written to its cgroup and recorded in its state (``resources.py``)

The config's hooks run at the points ``hooks.py`` lists (create, start and delete each take theirs);
the state dir is ``statedir.py``'s; start, kill and delete are ``control.py``'s (the cheap verbs,
which ``entry.py`` runs without this module's imports when there are no hooks). Repeating
``delete`` is harmless; ``create`` of an id that exists fails and changes nothing.

The root also holds ``@seccomp/``, the seccomp programs ``filters.py`` keeps for later creates.

Caveats: a cgroupsPath in systemd's ``slice:prefix:name`` form, and ``--systemd-cgroup`` (the CLI's
create and run), are refused (no systemd driver);
relative cgroup paths start at the hierarchy's root, not at the caller's group; ``--no-pivot`` and
``--no-new-keyring`` are taken and ignored (pivot_root and a fresh keyring are always stricter).
"""

from __future__ import annotations

import _signal  # (``signal``'s enums import ``enum``: ~5 ms of a strata-oci create)
import os
import pwd

from .. import cgroups, cjson, devices
from ..errors import RunnerError
from ..process import start_time
from . import control, hooks, resources, rootfs, spec, statedir
from .control import check_id, default_root, parse_signal
from .log import now
from .statedir import Container

TYPE_CHECKING = False
if TYPE_CHECKING:  # (``typing`` is ~10 ms of a strata-oci create's start-up)
    import socket
    from collections.abc import Callable
    from typing import Any

__all__ = ["Runtime", "ExecFailed", "check_id", "parse_signal", "default_root", "device_rules"]
STATUSES = ("created", "running", "paused", "stopped")


def _cgroup_path(config: dict[str, Any], cid: str) -> str:
    path = (config.get("linux") or {}).get("cgroupsPath") or f"/strata-oci/{cid}"
    if ":" in path and not path.startswith("/"):
        raise RunnerError(
            f"cgroupsPath {path!r} names a systemd unit: strata-oci manages cgroups itself "
            "(set the engine's cgroup manager to cgroupfs)"
        )
    return path


def device_rules(config: dict[str, Any]) -> list[devices.DeviceRule]:
    """runc's list: deny everything, the config's rules, then the devices every container may use
    (mknod, null, zero, full, random, urandom, tty, console, ptmx, pts, tun), which always win."""
    given = ((config.get("linux") or {}).get("resources") or {}).get("devices") or []
    always = [r for r in devices.DEFAULT_RULES if r["allow"]]
    rules: list[devices.DeviceRule] = [{"allow": False, "type": "a", "access": "rwm"}, *given, *always]
    for rule in rules:
        devices.v1_line(rule)  # RunnerError for a malformed rule, before anything is made
    return rules


class Runtime:
    """strata-oci's verbs over the state root ``root``. Errors: ``RunnerError`` (one line)."""

    def __init__(self, root: str | None = None, warn: Callable[[str], None] | None = None) -> None:
        self.root = root or default_root()
        self.warn = warn or (lambda _message: None)  # what fails without failing the verb (poststart, poststop)
        self._lasting: hooks.CreateHooks | None = None  # ``run``'s hook helper, from its create to its delete

    def get(self, cid: str) -> Container:
        return control.get(self.root, cid)

    # ---- create / start / run ----------------------------------------------------------------

    def load_bundle(self, bundle: str) -> tuple[dict[str, Any], hooks.Hooks]:
        """The bundle's config, checked, with its root made absolute; its hooks apart (checked too)."""
        bundle = os.path.abspath(bundle)
        try:
            with open(os.path.join(bundle, "config.json")) as f:
                config: dict[str, Any] = cjson.loads(f.read())
        except FileNotFoundError:
            raise RunnerError(f"bundle {bundle}: no config.json there") from None
        except (OSError, ValueError) as e:
            raise RunnerError(f"bundle {bundle}: cannot read config.json: {e}") from None
        config_hooks = hooks.check(config.pop("hooks", None) if isinstance(config, dict) else None)
        spec.check(config)
        root = os.path.join(bundle, config["root"]["path"])
        if not os.path.isdir(root):
            raise RunnerError(f"bundle {bundle}: root.path {root} is not a directory")
        config["root"]["path"] = os.path.realpath(root)
        for key, _value in ((config.get("linux") or {}).get("sysctl") or {}).items():
            rootfs.check_sysctl(config, key)
        return config, config_hooks

    def create(
        self,
        cid: str,
        bundle: str,
        pid_file: str | None = None,
        console_socket: str | None = None,
        preserve_fds: int = 0,
        lasting: bool = False,
    ) -> int:
        """Make the container and leave PID 1 waiting on ``exec.fifo``; returns its pid (our child).
        ``lasting`` (``run``): the hook helper stays for this process's start and delete."""
        from .. import init  # (lazily: the cheap verbs never load it)
        from . import filters

        check_id(cid)
        config, config_hooks = self.load_bundle(bundle)
        bundle = os.path.abspath(bundle)
        terminal = bool((config.get("process") or {}).get("terminal"))
        if terminal and not console_socket:
            raise RunnerError(
                "process.terminal is set: --console-socket is required (strata-oci relays no terminal itself)"
            )
        if console_socket and not terminal:
            raise RunnerError("--console-socket given but process.terminal is not set")
        cgroup_path = _cgroup_path(config, cid)
        rules = device_rules(config)
        profile = (config.get("linux") or {}).get("seccomp")
        try:
            sec = filters.prepare(self.root, profile) if profile else None
        except OSError as e:
            raise RunnerError(f"cannot build the seccomp filter: {e}") from None
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        directory = os.path.join(self.root, cid)
        try:
            os.mkdir(directory, 0o711)
        except FileExistsError:
            raise RunnerError(f"container with id exists: {cid}") from None
        cgroup = cgroups.for_host(cid, path=cgroup_path)
        opened: list[int] = []
        pid = 0
        spawned = created = False
        sync = None
        annotations = config.get("annotations") or {}
        try:
            fifo = os.path.join(directory, "exec.fifo")
            os.mkfifo(fifo, 0o622)
            os.chmod(fifo, 0o622)  # (whatever the umask): the container's user may not be root
            cgroup.create(rules)
            cgroup.apply((config.get("linux") or {}).get("resources") or {})
            status_r, status_w = os.pipe()
            opened += [status_r, status_w]
            go_r, go_w = os.pipe()
            os.write(go_w, b"go")  # no union mount to wait for: PID 1 goes on at once
            os.close(go_w)
            opened.append(go_r)
            fifo_fd = os.open(fifo, os.O_PATH | os.O_CLOEXEC)
            opened.append(fifo_fd)
            console_fd = None
            if console_socket:
                console_fd = _console(console_socket).detach()
                opened.append(console_fd)
            init_spec = {
                "config": config,
                "status_fd": status_w,
                "seccomp": sec,
                "cgroup_procs": cgroup.procs_files(),
                "fifo_fd": fifo_fd,
                "console_fd": console_fd,
                "preserve_fds": preserve_fds,
                "die_with_parent": False,
            }
            if set(config_hooks) - ({"poststart"} if not lasting else set()):
                sync = hooks.CreateHooks(config_hooks, lasting)  # (before spawn: its helper keeps our namespaces)
                if sync.needed():
                    init_spec.update(sync.pid1_spec(status_w))
            os.set_inheritable(status_w, False)
            opened.remove(go_r)  # spawn closes it, whatever happens
            try:
                pid = init.spawn(init_spec, go_r, keep_stdio=True)
            except init.SetupFailed as e:
                raise RunnerError(str(e)) from None
            spawned = True
            for fd in (status_w, fifo_fd, *([console_fd] if console_fd is not None else [])):
                os.close(fd)
                opened.remove(fd)
            with os.fdopen(status_r, "r") as status:
                opened.remove(status_r)
                line = status.readline().strip()
                if line == "hooks" and sync is not None:  # PID 1 has its mounts, before pivot_root
                    sync.serve(hooks.state(cid, "creating", pid, bundle, annotations))
                    line = status.readline().strip()
            if line != "parked":
                os.waitpid(pid, 0)
                pid = 0
                message = line.split(" ", 2)[2] if line.startswith("error ") else "the container's init died"
                raise RunnerError(message)
            state = {
                "id": cid,
                "pid": pid,
                "pid_start": start_time(pid),
                "bundle": bundle,
                "rootfs": config["root"]["path"],
                "created": now(),
                "annotations": annotations,
                "owner": _owner(),
                "config": config,
                "hooks": config_hooks,
                "oci_version": spec.OCI_VERSION,
                "cgroup": {
                    "version": cgroup.version,
                    "path": cgroup.path,
                    "dirs": statedir.all_dirs(cgroup),
                    "freezer": statedir.freezer_file(cgroup),
                },
            }
            statedir.write(directory, state)
            if pid_file:
                statedir._write_atomic(os.path.abspath(pid_file), str(pid).encode())
            created = True
        except BaseException:
            if pid:
                init._kill(pid)
                os.waitpid(pid, 0)
            for fd in opened:
                os.close(fd)
            cgroup.destroy()
            import shutil  # (here: a failed create alone needs it, and it imports bz2 and lzma)

            shutil.rmtree(directory, ignore_errors=True)
            if spawned and sync is not None:  # undone as a delete undoes it (runc's destroy)
                sync.run_warning("poststop", hooks.state(cid, "stopped", 0, bundle, annotations), self.warn)
            raise
        finally:
            if sync is not None and not (lasting and created):
                sync.close()
        if lasting:
            self._lasting = sync
        return pid

    def start(self, cid: str) -> None:
        """Let a created container's PID 1 exec its command (``control.start``), then its poststart hooks."""
        c = self.get(cid)
        control.start(c)
        self._after("poststart", c, "running")

    def run(
        self,
        cid: str,
        bundle: str,
        pid_file: str | None = None,
        console_socket: str | None = None,
        preserve_fds: int = 0,
        detach: bool = False,
    ) -> int:
        """create + start, then (unless ``detach``) wait for PID 1, forwarding signals to it, delete
        the container and return its exit code (128 + N for signal N)."""
        pid = self.create(cid, bundle, pid_file, console_socket, preserve_fds, lasting=True)
        try:
            try:
                self.start(cid)
            except BaseException:
                self.delete(cid, force=True)
                raise
            if detach:
                return 0
            return self._wait_and_delete(cid, pid)
        finally:
            if self._lasting is not None:
                self._lasting.close()
                self._lasting = None

    def _wait_and_delete(self, cid: str, pid: int) -> int:
        def forward(signum: int, _frame: Any) -> None:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

        for sig in (
            _signal.SIGTERM,
            _signal.SIGINT,
            _signal.SIGHUP,
            _signal.SIGQUIT,
            _signal.SIGUSR1,
            _signal.SIGUSR2,
            _signal.SIGWINCH,
        ):
            _signal.signal(sig, forward)
        _, status = os.waitpid(pid, 0)
        self.delete(cid, force=True)
        from .. import init  # (lazily: the cheap verbs never load it)

        return init.exit_code(status)

    # ---- signals, deletion --------------------------------------------------------------------

    def kill(self, cid: str, sig: int = _signal.SIGTERM, all_processes: bool = False) -> None:
        control.kill(self.get(cid), sig, all_processes)

    def delete(self, cid: str, force: bool = False) -> None:
        c = control.delete(self.root, cid, force)
        if c is not None:
            self._after("poststop", c, "stopped")

    def _after(self, kind: str, c: Container, status: str) -> None:
        """poststart or poststop: here, or by ``run``'s helper (this process is in the container's
        namespaces then)."""
        entries = (c.state.get("hooks") or {}).get(kind)
        if entries and self._lasting is not None:
            self._lasting.run_warning(kind, c.hook_state(status), self.warn)
        elif entries:
            hooks.run_warning(kind, entries, c.hook_state(status), self.warn)

    # ---- exec ---------------------------------------------------------------------------------

    def exec(
        self,
        cid: str,
        process: dict[str, Any],
        pid_file: str | None = None,
        console_socket: str | None = None,
        detach: bool = False,
        preserve_fds: int = 0,
    ) -> int:
        """Run ``process`` (the runtime-spec's ``process`` object) in the container. Returns the
        command's exit code, or 0 once it has started with ``detach``."""
        from .. import init  # (lazily: the cheap verbs never load it)
        from . import filters

        c = self.get(cid)
        status = c.status()
        if status == "paused":
            raise RunnerError("cannot exec in a paused container")
        if status == "stopped":
            raise RunnerError("cannot exec in a stopped container")
        spec.check({**c.config, "process": process})
        terminal = bool(process.get("terminal"))
        if terminal and not console_socket:
            raise RunnerError(
                "process.terminal is set: --console-socket is required (strata-oci relays no terminal itself)"
            )
        user = process.get("user") or {}
        ids = f"{user.get('uid', 0)}:{user.get('gid', 0)}"
        if user.get("additionalGids"):
            ids += ":" + ",".join(str(g) for g in user["additionalGids"])
        profile = (c.config.get("linux") or {}).get("seccomp")
        status_r, status_w = os.pipe()
        opened = [status_r, status_w]
        master = slave = None
        try:
            if terminal:
                try:
                    master, slave = rootfs.pty_of(
                        os.open(
                            f"/proc/{c.pid}/root/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_NOFOLLOW | os.O_CLOEXEC
                        )
                    )
                except OSError:
                    master, slave = os.openpty()
                opened += [master, slave]
            join_spec = {
                "pid": c.pid,
                "args": process.get("args") or [],
                "env": process.get("env") or [],
                "cwd": process.get("cwd") or "/",
                "user": ids,
                "tty": terminal,
                "capabilities": process.get("capabilities"),
                "no_new_privs": bool(process.get("noNewPrivileges")),
                "seccomp": filters.prepare(self.root, profile) if profile else None,
                "cgroup_procs": resources.procs_files(c.cgroup()),
                "status_fd": status_w,
                "rlimits": process.get("rlimits"),
                "oom_score_adj": process.get("oomScoreAdj"),
                "umask": user.get("umask"),
                "preserve_fds": preserve_fds,
                "detach": detach,
            }
            helper = os.fork()
            if helper == 0:
                code = 126
                try:
                    if slave is not None and master is not None:
                        for target in (0, 1, 2):
                            os.dup2(slave, target)
                        os.close(master)
                    os.close(status_r)
                    code = init.join(join_spec)
                finally:
                    os._exit(code)
            os.close(status_w)
            opened.remove(status_w)
            if slave is not None:
                os.close(slave)
                opened.remove(slave)
            with os.fdopen(status_r, "r") as reports:
                opened.remove(status_r)
                first = reports.readline().strip()
                if first.startswith("pid "):
                    pid = int(first.split()[1])
                    if pid_file:
                        statedir._write_atomic(os.path.abspath(pid_file), str(pid).encode())
                    if master is not None and console_socket:
                        _send_console(console_socket, master)
                    failure = reports.readline().strip()  # EOF once it has exec'd
                else:
                    failure = first
            if failure.startswith("error "):
                os.waitpid(helper, 0)
                _, failed, message = failure.split(" ", 2)
                raise ExecFailed(int(failed), message)
            if not detach:
                return _wait_forwarding(helper, pid)
            os.waitpid(helper, 0)
            return 0
        finally:
            for fd in opened:
                os.close(fd)

    # ---- the rest -------------------------------------------------------------------------------

    def pids(self, cid: str) -> list[int]:
        c = self.get(cid)
        if c.status() == "stopped":
            return []
        return c.cgroup().pids()

    def list(self) -> list[dict[str, Any]]:
        out = []
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        for name in names:
            try:
                out.append(self.get(name).oci_state())
            except RunnerError:
                continue
        return out

    def pause(self, cid: str) -> None:
        c = self.get(cid)
        if c.status() != "running":
            raise RunnerError("container not running")
        c.cgroup().freeze(True)

    def resume(self, cid: str) -> None:
        c = self.get(cid)
        if c.status() != "paused":
            raise RunnerError("container not paused")
        c.cgroup().freeze(False)

    def update(self, cid: str, changes: dict[str, Any]) -> None:
        """New limits (a LinuxResources object) for a container that has not stopped (``resources``)."""
        c = self.get(cid)
        if c.status() == "stopped":
            raise RunnerError("container not running")
        current = c.state.get("resources") or (c.config.get("linux") or {}).get("resources") or {}
        c.state["resources"] = resources.update(c.cgroup(), current, changes)
        statedir.write(c.dir, c.state)


class ExecFailed(RunnerError):
    """The command could not be run in the container (``code``: 126 cannot run, 127 not found)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _owner() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _console(path: str) -> socket.socket:
    """A connection to the caller's console socket (runc's ``--console-socket``)."""
    import socket  # (here: only a container with a terminal has a console socket)

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as e:
        sock.close()
        raise RunnerError(f"cannot connect to the console socket {path}: {e.strerror}") from None
    return sock


def _send_console(path: str, master: int) -> None:
    from .. import init  # (lazily: the cheap verbs never load it)

    sock = _console(path)
    try:
        init.send_console(sock.fileno(), master)
    finally:
        sock.close()


def _wait_forwarding(helper: int, pid: int) -> int:
    """Wait for the exec helper (its status is the command's), passing signals on to the command."""

    def forward(signum: int, _frame: Any) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP, _signal.SIGQUIT, _signal.SIGUSR1, _signal.SIGUSR2):
        _signal.signal(sig, forward)
    _, status = os.waitpid(helper, 0)
    from .. import init  # (lazily: the cheap verbs never load it)

    return init.exit_code(status)
