"""Registry credentials on disk: ``auth.json`` in containers' format, which is also the ``auths`` part
of Docker's ``config.json`` (either file can be named with ``--authfile``).

    {"auths": {"registry.example:5000": {"auth": "<base64 of user:password>"},
               "registry.example:5000/team": {"auth": "..."}}}

Default path: ``$XDG_CONFIG_HOME/strata/auth.json`` (``~/.config/strata/auth.json``). Keys are a host
(``host[:port]``) or a namespace in it (``host/team``); a lookup takes the most specific key that
covers the repository, as containers/image does. Docker's spellings of keys (``https://host/v1/``,
``index.docker.io`` for Docker Hub) are read too. The file is written whole, by rename, mode 0600 in
a 0700 directory; other keys in it (``credHelpers``, Docker's settings) are kept as they were.

Caveats: credential helpers (``credHelpers``, ``credsStore``) and identity tokens are not used.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from typing import Any

from .errors import BadInput

DOCKER_HUB = "docker.io"
_HUB_ALIASES = {"index.docker.io", "registry-1.docker.io", "registry.hub.docker.com", DOCKER_HUB}


def default_path() -> str:
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(config, "strata", "auth.json")


def normalise_key(key: str) -> str:
    """``https://host:5000/v1/`` -> ``host:5000``; Docker Hub's many names -> ``docker.io``."""
    for scheme in ("https://", "http://"):
        if key.startswith(scheme):
            key = key[len(scheme) :]
            key = key.split("/", 1)[0]  # Docker's keys carry an API path (/v1/), never a namespace
            break
    key = key.rstrip("/")
    host, sep, rest = key.partition("/")
    if host.lower() in _HUB_ALIASES:
        host = DOCKER_HUB
    return host + sep + rest


class AuthFile:
    def __init__(self, path: str | None = None) -> None:
        self.path = path or default_path()

    def _read(self) -> dict[str, Any]:
        try:
            with open(self.path, "rb") as f:
                doc = json.loads(f.read() or b"{}")
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise BadInput(f"{self.path}: cannot read credentials ({getattr(e, 'strerror', None) or e})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("auths", {}), dict):
            raise BadInput(f'{self.path}: not an auth file (no "auths" object)')
        return doc

    def credentials(self, host: str, repository: str = "") -> tuple[str, str] | None:
        """(user, password) for ``host/repository``: the most specific key that covers it."""
        auths = {normalise_key(k): v for k, v in self._read().get("auths", {}).items()}
        parts = normalise_key(f"{host}/{repository}" if repository else host).split("/")
        for n in range(len(parts), 0, -1):
            entry = auths.get("/".join(parts[:n]))
            if isinstance(entry, dict) and (found := self._decode(entry, "/".join(parts[:n]))):
                return found
        return None

    def _decode(self, entry: dict[str, Any], key: str) -> tuple[str, str] | None:
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                user, sep, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                sep = ""
            if not sep:
                raise BadInput(f"{self.path}: the entry for {key} is not base64 of user:password")
            return user, password
        if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return entry["username"], entry["password"]
        return None

    def store(self, key: str, user: str, password: str) -> None:
        doc = self._read()
        auths = {k: v for k, v in doc.get("auths", {}).items() if normalise_key(k) != normalise_key(key)}
        auths[normalise_key(key)] = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
        self._write({**doc, "auths": auths})

    def remove(self, key: str | None) -> list[str]:
        """Forget ``key`` (None: every registry). Returns the keys removed."""
        doc = self._read()
        auths = doc.get("auths", {})
        gone = [k for k in auths if key is None or normalise_key(k) == normalise_key(key)]
        if gone:
            self._write({**doc, "auths": {k: v for k, v in auths.items() if k not in gone}})
        return gone

    def _write(self, doc: dict[str, Any]) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".auth-")  # 0600 from the start
        except OSError as e:
            raise BadInput(f"{self.path}: cannot write credentials ({e.strerror})") from None
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent="\t")
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise
