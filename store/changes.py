"""Apply Dockerfile-style ``--change`` instructions to an image config (import, commit).

Supported as in ``docker import/commit --change``: CMD, ENTRYPOINT (JSON or shell form), ENV, EXPOSE,
LABEL, USER, VOLUME, WORKDIR, STOPSIGNAL. ONBUILD is refused (nothing here builds images).
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from .errors import BadInput


def _exec_form(arg: str, what: str) -> list[str]:
    arg = arg.strip()
    if arg.startswith("["):
        try:
            value = json.loads(arg)
        except ValueError:
            raise BadInput(f"{what}: malformed JSON array {arg!r}") from None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadInput(f"{what}: expected a JSON array of strings")
        return value
    return ["/bin/sh", "-c", arg]


def _pairs(arg: str, what: str) -> list[tuple[str, str]]:
    words = shlex.split(arg)
    if len(words) >= 2 and "=" not in words[0]:
        return [(words[0], arg.split(None, 1)[1])]  # legacy form: ENV KEY value with spaces
    out = []
    for word in words:
        if "=" not in word or word.startswith("="):
            raise BadInput(f"{what}: expected KEY=VALUE, got {word!r}")
        key, value = word.split("=", 1)
        out.append((key, value))
    return out


def apply_changes(config: dict[str, Any], changes: list[str]) -> dict[str, Any]:
    """Return the image config's ``config`` section with ``changes`` applied (input unchanged)."""
    out: dict[str, Any] = json.loads(json.dumps(config))
    for change in changes:
        parts = change.strip().split(None, 1)
        if len(parts) != 2:
            raise BadInput(f"invalid --change {change!r}: expected 'INSTRUCTION arguments'")
        op, arg = parts[0].upper(), parts[1]
        what = f"--change {op}"
        if op == "CMD":
            out["Cmd"] = _exec_form(arg, what)
        elif op == "ENTRYPOINT":
            out["Entrypoint"] = _exec_form(arg, what)
        elif op == "ENV":
            env = [e for e in out.get("Env") or []]
            for key, value in _pairs(arg, what):
                env = [e for e in env if e.split("=", 1)[0] != key] + [f"{key}={value}"]
            out["Env"] = env
        elif op == "LABEL":
            out["Labels"] = {**(out.get("Labels") or {}), **dict(_pairs(arg, what))}
        elif op == "EXPOSE":
            ports = dict(out.get("ExposedPorts") or {})
            for port in arg.split():
                ports[port if "/" in port else f"{port}/tcp"] = {}
            out["ExposedPorts"] = ports
        elif op == "VOLUME":
            vols = dict(out.get("Volumes") or {})
            for v in _exec_form(arg, what) if arg.strip().startswith("[") else arg.split():
                vols[v] = {}
            out["Volumes"] = vols
        elif op == "USER":
            out["User"] = arg.strip()
        elif op == "WORKDIR":
            out["WorkingDir"] = arg.strip()
        elif op == "STOPSIGNAL":
            out["StopSignal"] = arg.strip()
        else:
            raise BadInput(f"invalid --change {change!r}: {op} is not supported")
    return out
