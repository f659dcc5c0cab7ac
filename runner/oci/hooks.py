"""runtime-spec hooks (config.md, "POSIX-platform Hooks"): each kind run at its point, in the namespaces
the spec names, with the container's state (runtime.md) on stdin; ``path``, ``args``, ``env`` and
``timeout`` as given. What runs where:

    prestart, createRuntime  create, once PID 1 has its mounts and before its pivot_root, in the
                             runtime's namespaces: by a helper forked before ``init.spawn`` makes
                             the container's, while PID 1 waits (runc's ``procHooks`` sync)
    createContainer          create, right after those, in PID 1 (its namespaces; path on the host)
    startContainer           start, in PID 1 once ``start`` has opened the exec fifo and before
                             the byte that lets it exec (path in the container's root)
    poststart                start, once PID 1 has exec'd its command (the fifo's write end, close
                             on exec, has gone), in the runtime's namespaces
    poststop                 delete, after the container is gone

State ``status``: ``creating`` for the first three, ``created``, ``running``, ``stopped``; ``pid``
is PID 1's as the host sees it (absent once stopped). A failing prestart, createRuntime or
createContainer hook fails create (nothing is left; poststop hooks run, as runc's destroy runs
them), a startContainer one fails start (PID 1 exits: stopped); poststart and poststop failures
are warnings and the rest run. A hook's stdout and stderr are one pipe, kept (4 KiB) for the error.

Caveats: the hook runs as the process that runs it: root in the runtime's namespaces, and for
startContainer the container's user, capabilities and no_new_privs (as runc), before seccomp.
"""

from __future__ import annotations

import _signal  # (``signal``'s enums import ``enum``: ~5 ms of a strata-oci create)
import os
import select
import time

from .. import cjson
from ..errors import RunnerError
from . import spec

TYPE_CHECKING = False
if TYPE_CHECKING:  # (``typing`` is ~10 ms of a strata-oci create's start-up)
    from collections.abc import Callable
    from typing import Any

    Hooks = dict[str, list[dict[str, Any]]]

KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
_FIELDS = {"path", "args", "env", "timeout"}
_KEEP_OUTPUT = 4096


class HookFailed(RunnerError):
    pass


def check(hooks: Any) -> Hooks:
    """A config's ``hooks`` checked (one line for the first thing wrong) and without empty kinds."""
    if hooks is None:
        return {}
    if not isinstance(hooks, dict):
        raise RunnerError("config.json: hooks must be an object")
    for kind, entries in hooks.items():
        if kind not in KINDS:
            raise RunnerError(f"config.json: hooks.{kind} is not a runtime-spec hook")
        if not isinstance(entries, list | None):
            raise RunnerError(f"config.json: hooks.{kind} must be an array")
        for i, hook in enumerate(entries or []):
            where = f"config.json: hooks.{kind}[{i}]"
            if not isinstance(hook, dict):
                raise RunnerError(f"{where} must be an object")
            unknown = sorted(set(hook) - _FIELDS)
            if unknown:
                raise RunnerError(f"{where}.{unknown[0]} is not supported by strata")
            if not isinstance(hook.get("path"), str) or not hook["path"].startswith("/"):
                raise RunnerError(f"{where}.path must be an absolute path")
            for key in ("args", "env"):
                value = hook.get(key)
                if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
                    raise RunnerError(f"{where}.{key} must be an array of strings")
            timeout = hook.get("timeout")
            if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0):
                raise RunnerError(f"{where}.timeout must be a whole number of seconds above 0")
    return {kind: list(entries) for kind, entries in hooks.items() if entries}


def state(cid: str, status: str, pid: int, bundle: str, annotations: dict[str, str] | None) -> dict[str, Any]:
    """The runtime-spec state a hook reads on stdin."""
    out: dict[str, Any] = {"ociVersion": spec.OCI_VERSION, "id": cid, "status": status}
    if pid:
        out["pid"] = pid
    out["bundle"] = bundle
    if annotations:
        out["annotations"] = annotations
    return out


def run(kind: str, entries: list[dict[str, Any]], st: dict[str, Any]) -> str | None:
    """Run ``entries`` in order; stop at the first that fails and say why (one line), else None."""
    payload = cjson.dumps(st).encode()
    for i, hook in enumerate(entries):
        failure = _run_one(hook, payload)
        if failure is not None:
            return f"{kind} hook #{i} ({hook['path']}): {failure}"
    return None


def run_warning(kind: str, entries: list[dict[str, Any]], st: dict[str, Any], warn: Callable[[str], None]) -> None:
    """poststart and poststop: every hook runs; a failure is a warning (runtime.md's lifecycle)."""
    payload = cjson.dumps(st).encode()
    for i, hook in enumerate(entries):
        failure = _run_one(hook, payload)
        if failure is not None:
            warn(f"{kind} hook #{i} ({hook['path']}): {failure}")


def _run_one(hook: dict[str, Any], payload: bytes) -> str | None:
    path = hook["path"]
    args = list(hook.get("args") or [path])
    env = dict(e.split("=", 1) for e in hook.get("env") or [] if "=" in e)
    timeout = hook.get("timeout")
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the hook: the state on stdin, stdout and stderr one pipe, no other fd
        try:
            os.dup2(in_r, 0)
            os.dup2(out_w, 1)
            os.dup2(out_w, 2)
            os.closerange(3, 1 << 20)
            for sig in (_signal.SIGPIPE, _signal.SIGXFSZ):  # ignored by Python, and an ignored signal stays so
                _signal.signal(sig, _signal.SIG_DFL)
            os.execve(path, args, env)
        except OSError as e:
            os.write(2, f"exec {path}: {e.strerror}".encode())
        finally:
            os._exit(127)
    os.close(in_r)
    os.close(out_w)
    output = bytearray()
    pidfd = os.pidfd_open(pid)
    timed_out = False
    try:
        os.set_blocking(in_w, False)
        poller = select.poll()
        poller.register(out_r, select.POLLIN)
        poller.register(pidfd, select.POLLIN)
        poller.register(in_w, select.POLLOUT)
        deadline = time.monotonic() + timeout if timeout else None
        pending = payload
        while True:
            wait = None if deadline is None else max(deadline - time.monotonic(), 0) * 1000
            events = dict(poller.poll(wait))
            if not events:  # the deadline passed
                os.kill(pid, _signal.SIGKILL)
                timed_out = True
                break
            if in_w in events:
                try:
                    pending = pending[os.write(in_w, pending) :]
                except BlockingIOError:
                    pass
                except BrokenPipeError:  # the hook does not read its stdin: its business
                    pending = b""
                if not pending:
                    poller.unregister(in_w)
                    os.close(in_w)
                    in_w = -1
            if out_r in events and _read_into(out_r, output) == 0:
                poller.unregister(out_r)
            if pidfd in events:
                break
        _, status = os.waitpid(pid, 0)
        os.set_blocking(out_r, False)
        try:  # what it wrote before it ended (a child it left may hold the pipe open: no waiting for EOF)
            while _read_into(out_r, output):
                pass
        except BlockingIOError:
            pass
    finally:
        for fd in (in_w, out_r, pidfd):
            if fd >= 0:
                os.close(fd)
    said = " / ".join(line for line in output.decode(errors="replace").strip().splitlines() if line.strip())
    said = f": {said[:300]}" if said else ""
    if timed_out:
        return f"timed out after {timeout} s{said}"
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return None
    return (f"exit status {code}" if code > 0 else f"killed by signal {-code}") + said


def _read_into(fd: int, output: bytearray) -> int:
    chunk = os.read(fd, 65536)
    output += chunk[: max(_KEEP_OUTPUT - len(output), 0)]
    return len(chunk)


def _read_line(fd: int) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()


class CreateHooks:
    """create's part. Made before ``init.spawn``, so that its helper keeps the runtime's namespaces:
    after spawn, this process is in the container's network, IPC and UTS namespaces, and its children
    in its PID namespace (none can be forked at all once PID 1 is gone). The helper runs the
    runtime-side hooks asked of this process from then on: prestart and createRuntime, poststop of
    a create that fails, and (``lasting``: ``run``, which starts and deletes too) poststart and
    poststop. ``pid1_spec`` goes into PID 1's spec; ``serve`` answers PID 1's ``hooks`` line;
    ``close`` in any case."""

    def __init__(self, hooks: Hooks, lasting: bool = False) -> None:
        self.hooks = hooks
        self.helper = 0
        self.reply_r = self.reply_w = self.req_w = self.res_r = -1
        if self.needed():
            self.reply_r, self.reply_w = os.pipe()
        if not any(
            hooks.get(k) for k in ("prestart", "createRuntime", "poststop", *(("poststart",) if lasting else ()))
        ):
            return
        req_r, self.req_w = os.pipe()
        self.res_r, res_w = os.pipe()
        self.helper = os.fork()
        if self.helper == 0:
            try:
                low = 3
                for fd in sorted((req_r, res_w)):  # nothing of the runtime's stays open here
                    os.closerange(low, fd)
                    low = fd + 1
                os.closerange(low, 1 << 20)
                while line := _read_line(req_r):  # {"kinds": [...], "state": {...}, "warn": bool}
                    ask = cjson.loads(line)
                    said: list[str] = []
                    for kind in ask["kinds"]:
                        if ask["warn"]:
                            run_warning(kind, hooks.get(kind) or [], ask["state"], said.append)
                        elif failure := run(kind, hooks.get(kind) or [], ask["state"]):
                            said.append(failure)
                            break
                    os.write(res_w, (cjson.dumps(said) + "\n").encode())
            finally:
                os._exit(0)
        os.close(req_r)
        os.close(res_w)

    def needed(self) -> bool:
        """Does PID 1 stop before pivot_root for these hooks?"""
        return any(self.hooks.get(k) for k in ("prestart", "createRuntime", "createContainer", "startContainer"))

    def _ask(self, kinds: list[str], st: dict[str, Any], warn: bool) -> list[str]:
        os.write(self.req_w, (cjson.dumps({"kinds": kinds, "state": st, "warn": warn}) + "\n").encode())
        line = _read_line(self.res_r)
        if not line:
            raise HookFailed("the hooks' helper died")
        said: list[str] = cjson.loads(line)
        return said

    def pid1_spec(self, status_fd: int) -> dict[str, Any]:
        """``before_pivot`` and ``on_start`` for ``init``: they run in PID 1 (a fork of this process)."""
        peer = [fd for fd in (self.reply_w, self.req_w, self.res_r) if fd >= 0]
        reply_r = self.reply_r
        container_side, start_side = self.hooks.get("createContainer") or [], self.hooks.get("startContainer") or []
        st: dict[str, Any] = {}

        def before_pivot() -> None:
            from .. import init  # (lazily: the cheap verbs never load it)

            try:
                for fd in peer:
                    os.close(fd)
                os.write(status_fd, b"hooks\n")
                line = _read_line(reply_r)
                os.close(reply_r)
                if not line:
                    raise init.SetupFailed(125, "the runtime stopped the container's set-up")
                st.update(cjson.loads(line))
                failure = run("createContainer", container_side, st)
            except (init.SetupFailed, OSError):
                raise
            except Exception as e:  # (PID 1 is a fork: nothing may unwind into the runtime's code)
                raise init.SetupFailed(125, f"createContainer hooks: {e}") from None
            if failure is not None:
                raise init.SetupFailed(125, failure)

        def on_start() -> None:
            from .. import init  # (lazily: the cheap verbs never load it)

            try:
                failure = run("startContainer", start_side, {**st, "status": "created"})
            except OSError as e:
                failure = f"startContainer hooks: {e}"
            if failure is not None:
                raise init.SetupFailed(125, failure)

        return {"before_pivot": before_pivot, "on_start": on_start if start_side else None}

    def serve(self, st: dict[str, Any]) -> None:
        """PID 1 has its mounts: prestart then createRuntime (by the helper), then PID 1 goes on."""
        os.close(self.reply_r)
        self.reply_r = -1
        if self.helper and (failed := self._ask(["prestart", "createRuntime"], st, warn=False)):
            raise HookFailed(failed[0])
        os.write(self.reply_w, (cjson.dumps(st) + "\n").encode())

    def run_warning(self, kind: str, st: dict[str, Any], warn: Callable[[str], None]) -> None:
        """poststart or poststop, by the helper (a failure: a warning)."""
        if self.helper and self.hooks.get(kind):
            for message in self._ask([kind], st, warn=True):
                warn(message)

    def close(self) -> None:
        if self.helper:  # idle between requests, or mid-hook if we were interrupted
            os.kill(self.helper, _signal.SIGKILL)
            os.waitpid(self.helper, 0)
            self.helper = 0
        for name in ("reply_r", "reply_w", "req_w", "res_r"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)
