"""A container's state dir as ``strata-oci`` keeps it (``<root>/<id>/state.json`` and, between create
and start, ``exec.fifo``): written (``write``) and read, its status derived as runc derives it, never
stored (``refreshState``), and the runtime-spec state documents made from it (``state``'s and the
hooks').

The cheap verbs (state, start, kill, delete) are each a fresh process that conmon or podman starts
once per container, so reading a state costs no more than Python's start-up: the state is also
written as ``state.marshal`` (the same dict, read by the built-in ``marshal``: no ``json``, whose
decoder imports ``re`` and ``enum``), and the paths those verbs need (the cgroup's directories and
its freezer file) are recorded at create. ``state.json`` stays the record (runc's name, read by
people and tests); a ``state.marshal`` this interpreter cannot read (another Python) is ignored for
it. Heavy modules (``cgroups``, ``hooks``, ``cjson``) are imported only on the paths that need them.
"""

from __future__ import annotations

import marshal
import os

from ..errors import NoSuchContainer, RunnerError
from ..process import process_alive

TYPE_CHECKING = False
if TYPE_CHECKING:  # (``typing`` alone is ~9 ms of a cheap verb's start-up)
    from typing import Any

    from .. import cgroups

STATE, FAST_STATE = "state.json", "state.marshal"


def write(directory: str, state: dict[str, Any]) -> None:
    """Write the state (both forms, each atomically: a reader sees the old or the new one)."""
    from .. import cjson

    _write_atomic(os.path.join(directory, STATE), cjson.dumps(state).encode())
    _write_atomic(os.path.join(directory, FAST_STATE), marshal.dumps(state))


def _write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def _read(directory: str, cid: str) -> dict[str, Any]:
    try:
        with open(os.path.join(directory, FAST_STATE), "rb") as f:
            state = marshal.load(f)
        if isinstance(state, dict):
            return state
    except (OSError, EOFError, ValueError, TypeError):
        pass
    from .. import cjson

    try:
        with open(os.path.join(directory, STATE)) as f:
            found: dict[str, Any] = cjson.loads(f.read())
            return found
    except FileNotFoundError:
        raise NoSuchContainer("container does not exist") from None
    except (OSError, ValueError) as e:
        raise RunnerError(f"container {cid}: unreadable state: {e}") from None


class Container:
    """A container's state dir and what its state says."""

    def __init__(self, root: str, cid: str) -> None:
        self.id = cid
        self.dir = os.path.join(root, cid)
        self.fifo = os.path.join(self.dir, "exec.fifo")
        self.state: dict[str, Any] = _read(self.dir, cid)

    @property
    def pid(self) -> int:
        return int(self.state.get("pid") or 0)

    @property
    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = self.state["config"]
        return config

    def cgroup(self) -> cgroups.Cgroup:
        from .. import cgroups

        cg = self.state["cgroup"]
        return cgroups.load(cg["version"], self.id, pid=self.pid, path=cg["path"])

    def cgroup_dirs(self) -> list[str] | None:
        """Every directory the container's cgroup may have (recorded at create; those ``update`` may
        add included), or None where its members are not found by directory (no cgroup: rootless)."""
        dirs = self.state["cgroup"].get("dirs")
        return None if dirs is None else list(dirs)

    def cgroup_pids(self) -> list[int]:
        dirs = self.cgroup_dirs()
        if dirs is None:
            return self.cgroup().pids()
        found: set[int] = set()
        for d in dirs:
            try:
                with open(os.path.join(d, "cgroup.procs")) as f:
                    found.update(int(x) for x in f.read().split())
            except FileNotFoundError:
                continue
        return sorted(found)

    def hooks(self, kind: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = (self.state.get("hooks") or {}).get(kind) or []
        return found

    def status(self) -> str:
        if not process_alive(self.pid, self.state.get("pid_start")):
            return "stopped"
        if os.path.exists(self.fifo):
            return "created"
        return "paused" if self._frozen() else "running"

    def _frozen(self) -> bool:
        cg = self.state["cgroup"]
        if "freezer" in cg:  # recorded at create: v1's freezer.state, v2's cgroup.freeze, or None
            path = cg["freezer"]
        else:
            from .. import cgroups

            group = self.cgroup()
            path = (
                os.path.join(group.freezer, "freezer.state")
                if isinstance(group, cgroups.V1) and group.freezer
                else os.path.join(group.dir, "cgroup.freeze")
                if isinstance(group, cgroups.V2)
                else None
            )
        if not path:
            return False
        try:
            with open(path) as f:
                return f.read().strip() in ("FROZEN", "FREEZING", "1")
        except OSError:
            return False

    def hook_state(self, status: str) -> dict[str, Any]:
        from . import hooks

        return hooks.state(
            self.id, status, 0 if status == "stopped" else self.pid, self.state["bundle"], self.state.get("annotations")
        )

    def oci_state(self) -> dict[str, Any]:
        """The runtime-spec state (runc's ``containerState`` fields)."""
        status = self.status()
        version = self.state.get("oci_version")
        if version is None:
            from . import spec

            version = spec.OCI_VERSION
        out = {
            "ociVersion": version,
            "id": self.id,
            "pid": 0 if status == "stopped" else self.pid,
            "status": status,
            "bundle": self.state["bundle"],
            "rootfs": self.state["rootfs"],
            "created": self.state["created"],
            "owner": self.state.get("owner", ""),
        }
        if self.state.get("annotations"):
            out["annotations"] = self.state["annotations"]
        return out

    def pidfd(self) -> int:
        """A pidfd of PID 1, checked to be the same process (not a reuse of its pid)."""
        try:
            fd = os.pidfd_open(self.pid)
        except (ProcessLookupError, ValueError):
            raise RunnerError("container not running") from None
        if not process_alive(self.pid, self.state.get("pid_start")):
            os.close(fd)
            raise RunnerError("container not running")
        return fd


def freezer_file(group: cgroups.Cgroup) -> str | None:
    """Where ``status`` reads whether the group is frozen (recorded at create)."""
    from .. import cgroups

    if isinstance(group, cgroups.V1):
        return os.path.join(group.freezer, "freezer.state") if group.freezer else None
    if isinstance(group, cgroups.V2):
        return os.path.join(group.dir, "cgroup.freeze")
    return None


def all_dirs(group: cgroups.Cgroup) -> list[str] | None:
    """Every directory ``group`` may come to have (v1: pids and cpuset too, which a limit or
    ``update`` makes), for ``cgroup_dirs``; None for no cgroup."""
    from .. import cgroups

    if isinstance(group, cgroups.V1):
        extra = [d for d in (group.pids_dir, group.cpuset_dir) if d]
        return list(dict.fromkeys([*group.dirs(), *extra]))
    if isinstance(group, cgroups.V2):
        return group.dirs()
    return None


def to_json(value: object, indent: str = "") -> str:
    """``json.dumps(value, indent=2)`` for what a state document holds (dicts, lists, strings,
    ints, booleans, None), without importing ``json``."""
    inner = indent + "  "
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{_string(str(k))}: {to_json(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list | tuple):
        if not value:
            return "[]"
        return "[\n" + ",\n".join(inner + to_json(v, inner) for v in value) + "\n" + indent + "]"
    if isinstance(value, str):
        return _string(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    raise TypeError(f"not in a state document: {type(value).__name__}")


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _string(text: str) -> str:
    """A JSON string as ``json.dumps`` spells it (ASCII: anything else as ``\\uXXXX``, surrogate
    pairs beyond the BMP)."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            code -= 0x10000
            out.append(f"\\u{0xD800 | (code >> 10):04x}\\u{0xDC00 | (code & 0x3FF):04x}")
    return '"' + "".join(out) + '"'
