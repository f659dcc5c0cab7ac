"""The build cache, as Docker's classic builder keeps it: no store of its own, the images themselves.

Every step is an image (untagged, its record naming its parent) whose config keeps the step's probe
as ``container_config``: the run config with ``Cmd`` the probe command (``#(nop) ...``, the COPY
checksums, RUN's command after its build args). A step is cached when an image whose parent is the
step's parent (none: FROM scratch) has the same probe and one history entry more than its parent;
the newest such image wins. So a change to an instruction, to the ARG values a RUN sees or to a
copied file's content misses, and every step after it misses too (their parent is new).

``docker_config`` gives a run config Docker's full shape (its empty fields included), which both the
image's ``config`` and its ``container_config`` take.
"""

from __future__ import annotations

import json
from typing import Any

from store import Store

_SHAPE: list[tuple[str, Any]] = [
    ("Hostname", ""),
    ("Domainname", ""),
    ("User", ""),
    ("AttachStdin", False),
    ("AttachStdout", False),
    ("AttachStderr", False),
    ("Tty", False),
    ("OpenStdin", False),
    ("StdinOnce", False),
    ("Env", None),
    ("Cmd", None),
    ("Image", ""),
    ("Volumes", None),
    ("WorkingDir", ""),
    ("Entrypoint", None),
    ("OnBuild", None),
    ("Labels", None),
]
_OPTIONAL = ("ExposedPorts", "Healthcheck", "StopSignal", "Shell", "ArgsEscaped")


def docker_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with every field Docker's ``container.Config`` always writes (the empty ones too);
    the ``omitempty`` ones only when set."""
    out = {key: config.get(key, default) if config.get(key) is not None else default for key, default in _SHAPE}
    for key in ("Cmd", "Entrypoint", "Env", "OnBuild"):  # an empty list is not null (CMD [] says so)
        if isinstance(config.get(key), list):
            out[key] = list(config[key])
    for key in _OPTIONAL:
        if config.get(key):
            out[key] = config[key]
    result: dict[str, Any] = json.loads(json.dumps(out))
    return result


class Cache:
    """The images that may be cached steps, indexed by parent once per build (kept up to date as the
    build adds its own, so two identical stages share their steps)."""

    def __init__(self, store: Store, enabled: bool) -> None:
        self.store = store
        self.enabled = enabled
        self.children: dict[str | None, list[str]] = {}
        if enabled:
            for image_id in store.images.ids():
                self.children.setdefault(store.images.record(image_id).parent, []).append(image_id)

    def find(self, parent: str | None, probe: dict[str, Any], history_len: int) -> str | None:
        if not self.enabled:
            return None
        best: tuple[str, str] | None = None
        for candidate in self.children.get(parent, []):
            try:
                config = self.store.images.config(candidate)
            except Exception:  # removed meanwhile, or unreadable: not a cache entry
                continue
            if config.get("container_config") != probe or len(config.get("history") or []) != history_len + 1:
                continue
            created = str(config.get("created", ""))
            if best is None or created > best[1]:
                best = (candidate, created)
        return best[0] if best else None

    def added(self, parent: str | None, image_id: str) -> None:
        self.children.setdefault(parent, []).append(image_id)
