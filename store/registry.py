"""Images to and from a registry, over the OCI distribution API (Docker's registry v2).

Pull shows the registry to the loader as an OCI image layout: ``index.json`` names the manifest the
tag points at, and ``blobs/sha256/<hex>`` are fetched by digest when the loader reads them (the
manifests of a list through the manifests endpoint). So a pull checks and stages exactly as a load
does: every blob against its digest, every layer against its diff_id, inside one writer transaction.

Push uploads what the store keeps: each layer's blob as it was stored (its digest, media type and
size are known, so one upload each, skipped when the registry has the blob already), the config, then
an OCI manifest under the tag.

Plain HTTP for loopback registries (Docker treats 127.0.0.0/8 as insecure too), HTTPS elsewhere.
No authentication yet: a registry that asks for it gets a one-line error.
"""

from __future__ import annotations

import http.client
import io
import json
import urllib.parse
from collections.abc import Callable
from typing import Any, BinaryIO

from .digest import check_digest, hex_of, sha256_bytes
from .errors import BadInput, NotFound, StoreError
from .images import parse_ref
from .load import INDEX_TYPES, MANIFEST_TYPES
from .sources import Source

_MANIFEST_LIMIT = 4 << 20
_ACCEPT = ", ".join(MANIFEST_TYPES + INDEX_TYPES)
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"


class RegistryError(StoreError):
    """The registry cannot be reached or refused a request."""


def split_remote(ref: str) -> tuple[str, str, str]:
    """``host[:port]/repo[:tag]`` -> (host, repository, tag). A name without a registry host is
    Docker Hub's (``busybox`` is ``library/busybox`` there), as Docker has it."""
    name, tag = parse_ref(ref)
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first, rest, tag
    return "registry-1.docker.io", name if rest else f"library/{name}", tag


def _insecure(host: str) -> bool:
    bare = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    return bare == "localhost" or bare == "[::1]" or bare.startswith("127.")


class Client:
    """One registry host; a connection per request (blobs stream from the response)."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.scheme = "http" if _insecure(host) else "https"

    def request(self, method: str, url: str, body: bytes | BinaryIO | None = None,
                headers: dict[str, str] | None = None, ok: tuple[int, ...] = (200,),
                what: str = "") -> http.client.HTTPResponse:
        """``url`` is a path on this host or an absolute URL (a Location the registry gave)."""
        parts = urllib.parse.urlsplit(url)
        scheme, host = (parts.scheme, parts.netloc) if parts.netloc else (self.scheme, self.host)
        path = urllib.parse.urlunsplit(("", "", parts.path, parts.query, ""))
        conn_type = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        conn = conn_type(host, timeout=60, blocksize=1 << 20)  # the default 8 KiB makes uploads CPU-bound
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise RegistryError(f"{self.host}: {getattr(e, 'strerror', None) or e}") from None
        if resp.status in ok:
            return resp
        if method == "GET" and resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
            location = urllib.parse.urljoin(f"{scheme}://{host}{path}", resp.getheader("Location", ""))
            resp.close()
            conn.close()
            return self.request(method, location, headers=headers, ok=ok, what=what)
        detail = _error_text(resp.read(64 << 10))
        resp.close()
        conn.close()
        if resp.status == 401:
            raise RegistryError(f"{self.host}: the registry asks for authentication, which strata does not do yet")
        if resp.status == 404:
            raise NotFound(f"{what or self.host + path}: not found in the registry")
        raise RegistryError(f"{self.host}: {method} {parts.path}: HTTP {resp.status}{': ' + detail if detail else ''}")


def _error_text(body: bytes) -> str:
    """The first message of a registry error body (``{"errors": [{"message": ...}]}``)."""
    try:
        errors = json.loads(body).get("errors") or []
        return str(errors[0].get("message", "")) if errors else ""
    except (ValueError, AttributeError, IndexError):
        return ""


def _read_all(resp: http.client.HTTPResponse, limit: int, where: str) -> bytes:
    data = resp.read(limit + 1)
    resp.close()
    if len(data) > limit:
        raise BadInput(f"{where}: a manifest over {limit} bytes")
    return data


class RegistrySource(Source):
    """A tag in a registry, read as an OCI image layout with one image in its index."""

    def __init__(self, client: Client, repo: str, tag: str, local_ref: str) -> None:
        self.client, self.repo = client, repo
        self.where = f"{client.host}/{repo}:{tag}"
        self._docs: dict[str, bytes] = {}
        self._lists: set[str] = set()  # digests that name manifests (of a list), not blobs
        self._sizes: dict[str, int] = {}
        resp = client.request("GET", f"/v2/{repo}/manifests/{tag}", headers={"Accept": _ACCEPT}, what=self.where)
        media = (resp.getheader("Content-Type") or "").split(";")[0].strip()
        said = resp.getheader("Docker-Content-Digest")
        data = _read_all(resp, _MANIFEST_LIMIT, self.where)
        self.digest = sha256_bytes(data)
        if said and said != self.digest:
            raise BadInput(f"{self.where}: the manifest hashes to {self.digest}, the registry says {said}")
        self._add_manifest(self.digest, data)
        desc: dict[str, Any] = {"digest": self.digest, "size": len(data),
                                "annotations": {"org.opencontainers.image.ref.name": local_ref}}
        if media in MANIFEST_TYPES + INDEX_TYPES:
            desc["mediaType"] = media
        self._docs["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [desc]}).encode()

    def _add_manifest(self, digest: str, data: bytes) -> None:
        self._docs[f"blobs/sha256/{hex_of(digest)}"] = data
        try:
            doc = json.loads(data)
        except ValueError:
            return  # the loader says what is wrong with it
        if isinstance(doc, dict) and isinstance(doc.get("manifests"), list):
            self._lists.update(d["digest"] for d in doc["manifests"] if isinstance(d, dict)
                               and isinstance(d.get("digest"), str))

    def _digest(self, name: str) -> str:
        if not name.startswith("blobs/sha256/"):
            raise NotFound(f"{self.where}: no {name}")
        return check_digest("sha256:" + name.removeprefix("blobs/sha256/"), self.where)

    def exists(self, name: str) -> bool:
        return name in self._docs or name.startswith("blobs/sha256/")

    def open(self, name: str) -> BinaryIO:
        if name in self._docs:
            return io.BytesIO(self._docs[name])
        digest = self._digest(name)
        if digest in self._lists:
            resp = self.client.request("GET", f"/v2/{self.repo}/manifests/{digest}", headers={"Accept": _ACCEPT},
                                       what=f"{self.where}: manifest {digest}")
            self._add_manifest(digest, _read_all(resp, _MANIFEST_LIMIT, self.where))
            return io.BytesIO(self._docs[name])
        return self.client.request("GET", f"/v2/{self.repo}/blobs/{digest}", what=f"{self.where}: blob {digest}")

    def size(self, name: str) -> int:
        if name in self._docs:
            return len(self._docs[name])
        digest = self._digest(name)
        if digest not in self._sizes:
            kind = "manifests" if digest in self._lists else "blobs"
            resp = self.client.request("HEAD", f"/v2/{self.repo}/{kind}/{digest}", headers={"Accept": _ACCEPT},
                                       what=f"{self.where}: {digest}")
            resp.close()
            length = resp.getheader("Content-Length")
            if length is None or not length.isdigit():
                raise RegistryError(f"{self.where}: no size for {digest}")
            self._sizes[digest] = int(length)
        return self._sizes[digest]

    def names(self) -> list[str]:
        return list(self._docs)


def push_image(client: Client, repo: str, tag: str, config: bytes,
               layers: list[tuple[str, str, int, Callable[[], BinaryIO]]],
               progress: Callable[[str, int], None] | None = None) -> str:
    """Upload ``layers`` ((digest, media type, size, opener) each, bottom first) and ``config``, then
    the manifest under ``tag``; ``progress(digest, size)`` once each blob is there (sent or found).
    Returns the manifest's digest."""
    config_digest = sha256_bytes(config)
    blobs: list[tuple[str, int, Callable[[], BinaryIO]]] = [
        (d, size, opener) for d, _media, size, opener in layers]
    blobs.append((config_digest, len(config), lambda: io.BytesIO(config)))
    for digest, size, opener in blobs:
        head = client.request("HEAD", f"/v2/{repo}/blobs/{digest}", ok=(200, 404))
        head.close()
        if head.status != 200:
            start = client.request("POST", f"/v2/{repo}/blobs/uploads/", ok=(202,))
            start.close()
            location = start.getheader("Location")
            if not location:
                raise RegistryError(f"{client.host}: the registry gave no upload location")
            sep = "&" if "?" in location else "?"
            with opener() as body:
                put = client.request("PUT", f"{location}{sep}digest={digest}", body=body, ok=(201,),
                                     headers={"Content-Type": "application/octet-stream",
                                              "Content-Length": str(size)})
            put.close()
        if progress:
            progress(digest, size)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": media, "digest": d, "size": size} for d, media, size, _ in layers],
    }, separators=(",", ":"), sort_keys=True).encode()
    put = client.request("PUT", f"/v2/{repo}/manifests/{tag}", body=manifest, ok=(201,),
                         headers={"Content-Type": MEDIA_MANIFEST})
    put.close()
    return sha256_bytes(manifest)
