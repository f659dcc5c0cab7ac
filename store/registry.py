"""Images in registries, over the OCI distribution API (Docker's registry v2): references, the
session with one registry, manifests and indexes, and a pull's view of an image as an OCI layout.

A ``Registry`` is one registry for one command: its ``Transport`` (scheme, TLS, proxy, retries) and
an ``Authorizer`` with the credentials ``auth.json`` holds for it. Each request names the scopes it
needs; a 401 is answered once (the challenge learnt, or a refused token asked for again). The registry
is pinged (``GET /v2/``: its scheme, its challenge) before the first request, unless it is on loopback:
there the first request, in plain HTTP, stands for the ping.

Pull shows the registry to the loader as an OCI image layout (``RegistrySource``): ``index.json``
names the one manifest chosen (an index resolved to the host's platform or ``--platform``; a
``NAME@sha256:…`` reference checked against the manifest's bytes), and ``blobs/sha256/<hex>`` are the
config (fetched when read) and the layers, which ``download.Fetcher`` brings in parallel, resumably,
into ``ROOT/downloads/`` before the loader stages them. So a pull checks and stages exactly as a load
does: every blob against its digest, every layer against its diff_id, in one writer transaction.
"""

from __future__ import annotations

import io
import json
import platform
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, BinaryIO

from .auth import Authorizer, scope_of
from .authfile import AuthFile, normalise_key
from .digest import check_digest, hex_of, is_digest, sha256_bytes
from .download import Downloads, Fetcher
from .errors import BadInput, DigestMismatch, InvalidReference, NotFound, RegistryError
from .images import parse_ref
from .load import INDEX_TYPES, MANIFEST_TYPES
from .sources import Source
from .transport import Response, Transport, TransportOptions, is_loopback
from .transport import system_roots as system_roots  # the zygote makes it for its forks

_MANIFEST_LIMIT = 4 << 20
_ACCEPT = ", ".join(MANIFEST_TYPES + INDEX_TYPES)
DOCKER_HUB_HOST = "registry-1.docker.io"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class RemoteOptions(TransportOptions):
    """``authfile``: credentials (default ``$XDG_CONFIG_HOME/strata/auth.json``); ``platform``:
    ``os/arch[/variant]`` to take from an index (default: this host's)."""

    authfile: str | None = None
    platform: str | None = None


@dataclass(frozen=True)
class RemoteRef:
    host: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def reference(self) -> str:
        """What the manifests endpoint is asked for: the digest when there is one."""
        return self.digest or self.tag or "latest"

    @property
    def local(self) -> str | None:
        """The local tag a pull gives (none for a pull by digest alone), in the familiar form."""
        if self.tag is None:
            return None
        return "{}:{}".format(*parse_ref(f"{self.name}:{self.tag}"))

    @property
    def name(self) -> str:
        return self.repository if self.host == DOCKER_HUB_HOST else f"{self.host}/{self.repository}"

    def __str__(self) -> str:
        return f"{self.name}@{self.digest}" if self.digest else f"{self.name}:{self.tag or 'latest'}"


def parse_remote(ref: str) -> RemoteRef:
    """``[host[:port]/]repo[:tag][@sha256:…]``. A name without a registry host is Docker Hub's
    (``busybox`` is ``library/busybox`` there), as Docker has it."""
    name, at, digest = ref.partition("@")
    if at and not is_digest(digest):
        raise InvalidReference(f"invalid reference format: {ref!r} (a digest is sha256: and 64 hex digits)")
    tagged = ":" in name.rsplit("/", 1)[-1]
    name, tag = parse_ref(name)
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        host, repo = first, rest
    else:
        host, repo = DOCKER_HUB_HOST, name if rest else f"library/{name}"
    return RemoteRef(host, repo, tag if tagged or not at else None, digest if at else None)


def split_remote(ref: str) -> tuple[str, str, str]:
    """``host[:port]/repo[:tag]`` -> (host, repository, tag)."""
    remote = parse_remote(ref)
    return remote.host, remote.repository, remote.reference


def _error_text(body: bytes) -> str:
    """The first message of a registry error body (``{"errors": [{"message": ...}]}``)."""
    try:
        errors = json.loads(body).get("errors") or []
        return str(errors[0].get("message", "")) if errors else ""
    except (ValueError, AttributeError, IndexError):
        return ""


class Registry:
    """One registry host for one command. Thread-safe."""

    def __init__(
        self, host: str, options: RemoteOptions, repository: str = "", credentials: tuple[str, str] | None = None
    ) -> None:
        self.host, self.options = host, options
        self.transport = Transport(host, options)
        if credentials is None:
            credentials = AuthFile(options.authfile).credentials(normalise_key(host), repository)
        self.auth = Authorizer(self.transport, credentials)
        self._pinged = False
        self._lock = threading.Lock()

    def ping(self) -> None:
        """Once: the scheme, and whether the registry wants credentials (its challenge)."""
        with self._lock:
            if self._pinged:
                return
            with self.transport.ping() as resp:
                if resp.status == 401:
                    self.auth.learn(resp.header("WWW-Authenticate"))
                elif resp.status != 200:
                    raise RegistryError(f"{self.host}: not a registry (GET /v2/ answered HTTP {resp.status})")
            self._pinged = True

    def _probe(self, method: str, url: str, headers: dict[str, str]) -> Response | None:
        """The first request to a loopback registry, sent as it is in plain HTTP, stands for the ping
        (one round trip less for every command against a local registry): an answer but a 400 (what
        a TLS server says to plain HTTP) means the registry speaks it, and a 401 brings the challenge
        as ``GET /v2/``'s would. None: ping as for any host, then send the request."""
        with self._lock:
            if self._pinged or not is_loopback(self.host):
                return None
            resp = self.transport.probe(method, url, headers)
            if resp is None:
                return None
            self._pinged = True
            if not (200 <= resp.status < 300 or 400 < resp.status < 500 and resp.status != 429):
                resp.close()  # plain HTTP it is; sent again, to follow a redirect or retry a 5xx or 429
                return None
            return resp

    def request(
        self,
        method: str,
        url: str,
        scopes: Iterable[str],
        *,
        headers: dict[str, str] | None = None,
        body: bytes | Callable[[], BinaryIO] | None = None,
        ok: tuple[int, ...] = (200,),
        what: str = "",
        retry: bool = True,
    ) -> Response:
        """``url``: a path or a Location. ``body``: bytes, or an opener (a 401 sends it again). A
        status outside ``ok`` raises, once the registry's 401 has been answered."""
        scopes = tuple(scopes)
        resp: Response | None = None
        if body is None and method in ("GET", "HEAD"):
            resp = self._probe(method, url, {**(headers or {}), **self.auth.header(scopes)})
        if resp is None:
            self.ping()
        for attempt in range(2):
            sent = {**(headers or {}), **self.auth.header(scopes)}
            if resp is None or attempt:
                payload = body() if callable(body) else body
                try:
                    resp = self.transport.request(method, url, sent, payload, retry)
                finally:
                    if payload is not None and not isinstance(payload, bytes):
                        payload.close()
            if resp.status != 401 or attempt:
                break
            challenge = resp.header("WWW-Authenticate")
            resp.close()
            if "Authorization" in sent:
                self.auth.forget(scopes)  # expired or revoked: ask again
            if challenge:
                self.auth.learn(challenge)
        assert resp is not None
        if resp.status in ok:
            return resp
        raise self._refusal(resp, method, url, what)

    def _refusal(self, resp: Response, method: str, url: str, what: str) -> RegistryError | NotFound:
        detail = _error_text(resp.read_all(64 << 10)) if method != "HEAD" else ""
        where = what or self.host
        if resp.status == 404:
            return NotFound(f"{where}: not found in the registry")
        if resp.status == 401:
            if self.auth.credentials is None:
                return RegistryError(f"{where}: authentication required (strata login {self.host})")
            return RegistryError(
                f"{where}: access denied for user {self.auth.credentials[0]}{': ' + detail if detail else ''}"
            )
        if resp.status == 403:
            return RegistryError(f"{where}: access denied{': ' + detail if detail else ''}")
        path = url.split("?", 1)[0]
        return RegistryError(f"{where}: {method} {path}: HTTP {resp.status}{': ' + detail if detail else ''}")


def login(host: str, user: str, password: str, options: RemoteOptions) -> str:
    """Check the credentials against the registry, then keep them. ``host`` may name a namespace in
    the registry (``host/team``), which then has its own credentials. Returns the key stored."""
    key = normalise_key(host)
    registry_host = key.split("/", 1)[0]
    if registry_host == "docker.io":
        registry_host = DOCKER_HUB_HOST
    registry = Registry(registry_host, options, credentials=(user, password))
    registry.ping()
    registry.auth.check_login()
    AuthFile(options.authfile).store(key, user, password)
    return key


def logout(host: str | None, options: RemoteOptions) -> list[str]:
    """Forget the credentials for ``host`` (None: all). Returns the keys removed."""
    return AuthFile(options.authfile).remove(host)


# -- manifests ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def parse_platform(text: str | None) -> Platform:
    """``os/arch[/variant]``; None: this host's (``linux/amd64`` on x86_64)."""
    if text is None:
        machine = platform.machine()
        arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)
        return Platform("linux", arch, "v7" if machine == "armv7l" else None)
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise BadInput(f"--platform {text}: not os/arch[/variant] (e.g. linux/arm64)")
    return Platform(*parts)


def _matches(desc: dict[str, Any], want: Platform) -> bool:
    got = desc.get("platform") or {}
    variant = got.get("variant") or None
    if want.architecture == "arm64" and variant == "v8":
        variant = None  # arm64's only variant: the same images
    wanted_variant = None if want.architecture == "arm64" and want.variant == "v8" else want.variant
    return (
        got.get("os") == want.os
        and got.get("architecture") == want.architecture
        and (wanted_variant is None or variant == wanted_variant)
    )


def _platforms(index: dict[str, Any]) -> str:
    names = []
    for d in index.get("manifests") or []:
        p = d.get("platform") or {} if isinstance(d, dict) else {}
        names.append("/".join(str(x) for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x) or "?")
    return ", ".join(dict.fromkeys(names)) or "none"


@dataclass(frozen=True)
class Manifest:
    digest: str
    media_type: str
    data: bytes


class Repository:
    """One repository of a registry: its manifests and blobs."""

    def __init__(self, registry: Registry, name: str, push: bool = False) -> None:
        self.registry, self.name = registry, name
        self.scopes = (scope_of(name, "pull,push" if push else "pull"),)
        self.where = f"{registry.host}/{name}"

    def manifest(self, reference: str) -> Manifest:
        """The manifest (or index) ``reference`` names; a digest is checked against its bytes."""
        where = f"{self.where}:{reference}" if not is_digest(reference) else f"{self.where}@{reference}"
        resp = self.registry.request(
            "GET", f"/v2/{self.name}/manifests/{reference}", self.scopes, headers={"Accept": _ACCEPT}, what=where
        )
        media = resp.header("Content-Type").split(";")[0].strip()
        said = resp.header("Docker-Content-Digest")
        data = resp.read_all(_MANIFEST_LIMIT)
        digest = sha256_bytes(data)
        if is_digest(reference) and digest != reference:
            raise DigestMismatch(f"{where}: the manifest hashes to {digest}")
        if is_digest(said) and said != digest:
            raise DigestMismatch(f"{where}: the manifest hashes to {digest}, the registry says {said}")
        return Manifest(digest, media, data)

    def resolve(self, reference: str, want: Platform) -> tuple[Manifest, Manifest]:
        """(what ``reference`` names, the image manifest for ``want`` in it: the same unless an index)."""
        top = chosen = self.manifest(reference)
        for _ in range(4):  # an index of indexes, at most this deep
            doc = _json(chosen.data, self.where)
            if chosen.media_type not in INDEX_TYPES and not (not chosen.media_type and "manifests" in doc):
                return top, chosen
            match = [d for d in doc.get("manifests") or [] if isinstance(d, dict) and _matches(d, want)]
            if not match:
                raise NotFound(
                    f"{self.where}:{reference}: no image for {want} in its index "
                    f"(it has {_platforms(doc)}; choose with --platform)"
                )
            digest = check_digest(match[0].get("digest"), f"{self.where}: index entry")
            chosen = self.manifest(digest)
            if match[0].get("size") not in (None, len(chosen.data)):
                raise BadInput(f"{self.where}@{digest}: {len(chosen.data)} bytes, its index says {match[0]['size']}")
        raise BadInput(f"{self.where}:{reference}: indexes nested too deep")

    def open_blob(self, digest: str, offset: int = 0) -> Response:
        """The blob's bytes from ``offset`` (a 206 answers a range; a 200 is the whole blob again)."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        return self.registry.request(
            "GET",
            f"/v2/{self.name}/blobs/{digest}",
            self.scopes,
            headers=headers,
            ok=(200, 206),
            what=f"{self.where}: blob {digest}",
        )


def _json(data: bytes, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise BadInput(f"{where}: malformed manifest JSON ({e})") from None
    if not isinstance(doc, dict):
        raise BadInput(f"{where}: a manifest that is not a JSON object")
    return doc


# -- pull -----------------------------------------------------------------------------------------
class RegistrySource(Source):
    """One image of a registry, read as an OCI image layout whose index names it."""

    check_present = False

    def __init__(
        self,
        repo: Repository,
        reference: str,
        local_ref: str | None,
        want: Platform,
        downloads: Downloads,
        parallel: int = 3,
        local: Callable[[str], str] | None = None,
    ) -> None:
        """``local(digest)``: where the store keeps that blob, if it does (a config is read there)."""
        self.repo, self.downloads, self.parallel, self.local = repo, downloads, parallel, local
        self.where = f"{repo.where}{'@' if is_digest(reference) else ':'}{reference}"
        self.top, image = repo.resolve(reference, want)
        self.digest = self.top.digest  # what Docker prints: the digest the reference names
        self._docs: dict[str, bytes] = {f"blobs/sha256/{hex_of(image.digest)}": image.data}
        self._sizes: dict[str, int] = {}  # from the manifest's descriptors: the loader checks them as read
        doc = _json(image.data, self.where)
        for blob in [doc.get("config"), *(doc.get("layers") or [])]:
            if isinstance(blob, dict) and is_digest(blob.get("digest")) and isinstance(blob.get("size"), int):
                self._sizes[blob["digest"]] = blob["size"]
        desc: dict[str, Any] = {"digest": image.digest, "size": len(image.data)}
        if local_ref:
            desc["annotations"] = {"org.opencontainers.image.ref.name": local_ref}
        if image.media_type in MANIFEST_TYPES:
            desc["mediaType"] = image.media_type
        self._docs["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [desc]}).encode()
        self._fetcher: Fetcher | None = None

    def _digest(self, name: str) -> str:
        if not name.startswith("blobs/sha256/"):
            raise NotFound(f"{self.where}: no {name}")
        return check_digest("sha256:" + name.removeprefix("blobs/sha256/"), self.where)

    def exists(self, name: str) -> bool:
        return name in self._docs or name.startswith("blobs/sha256/")

    def prefetch(self, names: list[str], progress: Progress | None) -> set[str]:
        if self.parallel < 1:  # no fetching ahead: each layer streams from the registry as it is staged
            return set()
        digests = list(dict.fromkeys(self._digest(n) for n in names))
        self._fetcher = Fetcher(self.downloads, self.repo.open_blob, self.where, self.parallel, progress)
        self._fetcher.start([(d, self.size(f"blobs/sha256/{hex_of(d)}"), hex_of(d)[:12]) for d in digests])
        return set(names)

    def kept(self, name: str) -> Callable[[], str] | None:
        digest = self._digest(name)
        if self._fetcher is not None and self._fetcher.has(digest):
            return partial(self._fetcher.wait, digest)  # (hashed as it came: download.Fetcher)
        return None

    def open(self, name: str) -> BinaryIO:
        if name in self._docs:
            return io.BytesIO(self._docs[name])
        digest = self._digest(name)
        if self._fetcher is not None and self._fetcher.has(digest):
            return self._fetcher.reader(digest)  # as it downloads
        if self.local is not None:
            try:  # a config the store has (checked against its digest as it is read, all the same)
                return open(self.local(digest), "rb")
            except FileNotFoundError:
                pass
        return self.repo.open_blob(digest)  # type: ignore[return-value]  # a config: small, read whole

    def size(self, name: str) -> int:
        if name in self._docs:
            return len(self._docs[name])
        digest = self._digest(name)
        if digest not in self._sizes:
            with self.repo.registry.request(
                "HEAD", f"/v2/{self.repo.name}/blobs/{digest}", self.repo.scopes, what=f"{self.where}: blob {digest}"
            ) as resp:
                length = resp.header("Content-Length")
            if not length.isdigit():
                raise RegistryError(f"{self.where}: no size for {digest}")
            self._sizes[digest] = int(length)
        return self._sizes[digest]

    def names(self) -> list[str]:
        return list(self._docs)

    def blobs(self) -> list[str]:
        """The digests of the image's config and layers."""
        return list(self._sizes)

    def fetched(self) -> list[str]:
        """Digests of the blobs this pull brought into ``ROOT/downloads``."""
        return self._fetcher.digests() if self._fetcher else []

    def close(self) -> None:
        if self._fetcher is not None:
            self._fetcher.close()
