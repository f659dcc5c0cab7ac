"""What a request to a registry carries to be let in: nothing, HTTP Basic, or a bearer token.

The registry says which in its 401's ``WWW-Authenticate`` (RFC 7235 challenges). For ``Bearer
realm=…,service=…[,scope=…]`` (distribution's token spec, docs/spec/auth/token.md) a token is asked
of the realm for the scopes a request needs (``repository:NAME:pull`` or ``:pull,push``, plus
``repository:OTHER:pull`` to mount a blob from another repository): ``GET realm?service=S&scope=…``
with Basic credentials when there are some (and ``account=USER``, as containers/image sends). The
answer's ``token`` or ``access_token`` is kept per set of scopes and reused until it expires
(``expires_in``, at least 60 s as the spec says), and asked for again when the registry answers 401
to it (expired or revoked early).

Thread-safe: the transfer threads share one ``Authorizer``.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import RegistryError
from .transport import Transport

_TOKEN_LIMIT = 1 << 20
_MIN_LIFETIME = 60
_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*(,|$)')


@dataclass
class Challenge:
    scheme: str  # lower case: "basic", "bearer"
    params: dict[str, str] = field(default_factory=dict)


def parse_challenges(header: str) -> list[Challenge]:
    """``Bearer realm="x",service="y", Basic realm="z"`` -> two challenges."""
    out: list[Challenge] = []
    pos = 0
    while pos < len(header):
        m = re.compile(r"\s*,?\s*([A-Za-z][A-Za-z0-9_-]*)").match(header, pos)
        if not m:
            break
        challenge = Challenge(m[1].lower())
        pos = m.end()
        while (p := _PARAM.match(header, pos)) and p.end() > pos:
            value = p[2]
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            challenge.params[p[1].lower()] = value
            pos = p.end()
            if p[3] != ",":
                break
        out.append(challenge)
    return out


def scope_of(repository: str, actions: str) -> str:
    return f"repository:{repository}:{actions}"


class Authorizer:
    """The ``Authorization`` header for a request to one registry, by the scopes it needs."""

    def __init__(self, transport: Transport, credentials: tuple[str, str] | None) -> None:
        self.transport = transport
        self.credentials = credentials
        self.challenge: Challenge | None = None  # None: nothing asked for (yet)
        self._tokens: dict[frozenset[str], tuple[str, float]] = {}
        self._lock = threading.Lock()
        self.token_requests = 0

    def learn(self, www_authenticate: str) -> Challenge | None:
        """Take the registry's challenge (from a 401). Returns the Bearer/Basic one we can answer."""
        for challenge in parse_challenges(www_authenticate):
            if challenge.scheme in ("bearer", "basic"):
                self.challenge = challenge
                return challenge
        raise RegistryError(
            f"{self.transport.host}: the registry asks for an authentication strata does not "
            f"speak ({www_authenticate.split(' ', 1)[0] or 'none named'})"
        )

    def header(self, scopes: Iterable[str]) -> dict[str, str]:
        if self.challenge is None:
            return {}
        if self.challenge.scheme == "basic":
            if self.credentials is None:
                return {}
            return {"Authorization": "Basic " + _basic(self.credentials)}
        wanted = frozenset(scopes)
        with self._lock:
            token, expires = self._tokens.get(wanted, ("", 0.0))
            if not token or time.monotonic() >= expires:
                token, expires = self._fetch(wanted)
                self._tokens[wanted] = (token, expires)
        return {"Authorization": f"Bearer {token}"}

    def forget(self, scopes: Iterable[str]) -> None:
        """The registry refused the token for these scopes: the next ``header`` asks for a new one."""
        with self._lock:
            self._tokens.pop(frozenset(scopes), None)

    def check_login(self) -> None:
        """Raise unless the credentials are accepted: Basic by ``GET /v2/``, tokens by asking the realm
        for one (no scope) as ``login`` does in Docker and podman."""
        if self.challenge is None:
            return
        if self.challenge.scheme == "bearer":
            self._fetch(frozenset())
            return
        with self.transport.request("GET", "/v2/", headers=self.header(())) as resp:
            if resp.status == 401:
                raise RegistryError(f"{self.transport.host}: login failed: invalid username or password")
            if resp.status != 200:
                raise RegistryError(f"{self.transport.host}: login failed: HTTP {resp.status}")

    def _fetch(self, scopes: frozenset[str]) -> tuple[str, float]:
        assert self.challenge is not None
        realm = self.challenge.params.get("realm")
        if not realm or urllib.parse.urlsplit(realm).scheme not in ("http", "https"):
            raise RegistryError(f"{self.transport.host}: the registry's token challenge names no usable realm")
        query: list[tuple[str, str]] = []
        if service := self.challenge.params.get("service"):
            query.append(("service", service))
        query += [("scope", s) for s in sorted(scopes)]
        headers = {}
        if self.credentials is not None:
            query.append(("account", self.credentials[0]))
            headers["Authorization"] = "Basic " + _basic(self.credentials)
        sep = "&" if urllib.parse.urlsplit(realm).query else "?"
        url = realm + (sep + urllib.parse.urlencode(query) if query else "")
        self.token_requests += 1
        started = time.monotonic()
        resp = self.transport.request("GET", url, headers=headers)
        body = resp.read_all(_TOKEN_LIMIT)
        realm_host = urllib.parse.urlsplit(realm).netloc
        if resp.status in (401, 403):
            if self.credentials is not None:
                raise RegistryError(
                    f"{self.transport.host}: login failed: invalid username or password "
                    f"(the token server {realm_host} refused them)"
                )
            raise RegistryError(
                f"{self.transport.host}: the token server {realm_host} refused an anonymous token "
                f"(strata login {self.transport.host})"
            )
        if resp.status != 200:
            raise RegistryError(f"{self.transport.host}: the token server {realm_host} answered HTTP {resp.status}")
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
            lifetime = doc.get("expires_in") or _MIN_LIFETIME
        except (ValueError, AttributeError):
            token, lifetime = None, 0
        if not isinstance(token, str) or not token or not isinstance(lifetime, int | float):
            raise RegistryError(f"{self.transport.host}: the token server {realm_host} gave no token")
        # from when we asked, less a margin: a token must not expire on its way to the registry
        return token, started + max(float(lifetime), _MIN_LIFETIME) - 5


def _basic(credentials: tuple[str, str]) -> str:
    return base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
