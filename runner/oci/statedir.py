"""A container's state dir as ``strata-oci`` keeps it (``<root>/<id>/state.json`` and, between create
and start, ``exec.fifo``), read: its status derived as runc derives it, never stored (``refreshState``),
and the runtime-spec state documents made from it (``state``'s and the hooks'). Written by
``runtime.py`` only.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .. import cgroups
from ..errors import NoSuchContainer, RunnerError
from ..process import process_alive
from . import hooks, spec


class Container:
    """A container's state dir and what its state says."""

    def __init__(self, root: str, cid: str) -> None:
        self.id = cid
        self.dir = os.path.join(root, cid)
        self.fifo = os.path.join(self.dir, "exec.fifo")
        try:
            with open(os.path.join(self.dir, "state.json")) as f:
                self.state: dict[str, Any] = json.load(f)
        except FileNotFoundError:
            raise NoSuchContainer("container does not exist") from None
        except (OSError, ValueError) as e:
            raise RunnerError(f"container {cid}: unreadable state: {e}") from None

    @property
    def pid(self) -> int:
        return int(self.state.get("pid") or 0)

    @property
    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = self.state["config"]
        return config

    def cgroup(self) -> cgroups.Cgroup:
        cg = self.state["cgroup"]
        return cgroups.load(cg["version"], self.id, pid=self.pid, path=cg["path"])

    def status(self) -> str:
        if not process_alive(self.pid, self.state.get("pid_start")):
            return "stopped"
        if os.path.exists(self.fifo):
            return "created"
        cg = self.cgroup()
        if isinstance(cg, cgroups.V1) and cg.freezer:
            try:
                with open(os.path.join(cg.freezer, "freezer.state")) as f:
                    if f.read().strip() in ("FROZEN", "FREEZING"):
                        return "paused"
            except OSError:
                pass
        elif isinstance(cg, cgroups.V2):
            try:
                with open(os.path.join(cg.dir, "cgroup.freeze")) as f:
                    if f.read().strip() == "1":
                        return "paused"
            except OSError:
                pass
        return "running"

    def hook_state(self, status: str) -> dict[str, Any]:
        return hooks.state(self.id, status, 0 if status == "stopped" else self.pid, self.state["bundle"],
                           self.state.get("annotations"))

    def oci_state(self) -> dict[str, Any]:
        """The runtime-spec state (runc's ``containerState`` fields)."""
        status = self.status()
        out = {"ociVersion": spec.OCI_VERSION, "id": self.id, "pid": 0 if status == "stopped" else self.pid,
               "status": status, "bundle": self.state["bundle"], "rootfs": self.state["rootfs"],
               "created": self.state["created"], "owner": self.state.get("owner", "")}
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
