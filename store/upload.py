"""Push: an image's blobs into a repository of a registry, then its manifest under a tag.

The tag is asked for first (``HEAD …/manifests/TAG``), then each blob (the layers as the store keeps
them, then the config), a few at a time when there are layers to overlap:
  1. ``HEAD`` it: a blob the repository has is not sent.
  2. An upload this store began and did not finish (``ROOT/uploads/``) is asked where it stands
     (``GET`` its location: ``Range: 0-N``) and goes on from byte N+1.
  3. Else, when another repository of the same registry is known to hold it (``places.Places``), the
     registry is asked to mount it from there (``POST …/uploads/?mount=D&from=R``, with a token that
     may also pull R): a 201 is the blob, sent for nothing; a 202 is an upload session to use.
  4. Else a new session (``POST …/uploads/``). A blob up to ``CHUNK`` bytes goes in one ``PUT
     …?digest=D``; a bigger one in ``PATCH``es of ``CHUNK`` bytes (``Content-Range: start-end``), each
     acknowledged one noted in ``ROOT/uploads/`` with the session's latest Location, then an empty
     ``PUT …?digest=D``.
A connection that drops mid-blob is resumed from what the registry acknowledged (step 2's question),
a few times; then the push stops with a line that says so, and pushing again resumes.

The manifest is OCI (the layers' media types as stored); the digest returned is its bytes' digest,
which is what the registry answers and ``skopeo inspect`` reports. When the tag names that digest
already (a push again), nothing else is asked or sent: a registry takes a manifest only once every
blob it names is in the repository (distribution answers ``MANIFEST_BLOB_UNKNOWN`` otherwise), and
keeps a tagged manifest's blobs, so the one ``HEAD`` says the push is done. When the tag names other
bytes, the blobs are checked and the manifest is sent even if every blob was there.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from .auth import scope_of
from .digest import sha256_bytes
from .errors import DigestMismatch, Interrupted, NotFound, RegistryError
from .places import Places
from .registry import MEDIA_CONFIG, MEDIA_MANIFEST, Registry
from .root import read_json, write_json

CHUNK = 16 << 20
RETRIES = 3  # resumptions of one blob within a push
_BACKOFF = 0.5  # seconds, doubled each time
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    media_type: str
    open: Callable[[], BinaryIO]
    label: str | None  # progress item; None: not shown (the config)


class _Slice:
    """``length`` bytes of a file from ``offset``, as a request body."""

    def __init__(self, f: BinaryIO, offset: int, length: int) -> None:
        self._f, self._left = f, length
        f.seek(offset)

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 or n > self._left else n
        data = self._f.read(n)
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._f.close()


class Sessions:
    """``ROOT/uploads/<key>.json``: an upload begun and not finished: {location, offset}."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def _path(self, host: str, repository: str, digest: str) -> str:
        key = hashlib.sha256(f"{host}/{repository}@{digest}".encode()).hexdigest()
        return os.path.join(self.directory, key + ".json")

    def get(self, host: str, repository: str, digest: str) -> tuple[str, int] | None:
        try:
            doc = read_json(self._path(host, repository, digest))
            return str(doc["location"]), int(doc["offset"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def save(self, host: str, repository: str, digest: str, location: str, offset: int) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        write_json(self._path(host, repository, digest), {"location": location, "offset": offset}, durable=False)

    def drop(self, host: str, repository: str, digest: str) -> None:
        try:
            os.unlink(self._path(host, repository, digest))
        except FileNotFoundError:
            pass


class Pusher:
    def __init__(
        self,
        registry: Registry,
        repository: str,
        sessions: Sessions,
        places: Places,
        parallel: int = 3,
        progress: Progress | None = None,
    ) -> None:
        self.registry, self.repository = registry, repository
        self.sessions, self.places, self.parallel = sessions, places, parallel
        self.where = f"{registry.host}/{repository}"
        self.scopes = (scope_of(repository, "pull,push"),)
        self._progress = progress

    def push(self, tag: str, layers: list[Blob], config: bytes) -> str:
        """Every blob, then the manifest under ``tag``; nothing when the tag names these very bytes
        already (a push again: one ``HEAD``). Returns the manifest's digest."""
        blobs = [*layers, Blob(sha256_bytes(config), len(config), MEDIA_CONFIG, lambda: io.BytesIO(config), None)]
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_MANIFEST,
                "config": {"mediaType": MEDIA_CONFIG, "digest": blobs[-1].digest, "size": len(config)},
                "layers": [{"mediaType": b.media_type, "digest": b.digest, "size": b.size} for b in layers],
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
        digest = sha256_bytes(manifest)
        # first, in this thread: it pings the registry (the threads would queue for it)
        if self._tagged(tag) == digest:  # pushed before: every blob is there (see the module's doc)
            for blob in blobs:
                self._report(blob, blob.size)
            self.places.note(self.registry.host, self.repository, [b.digest for b in blobs])
            return digest
        if len(layers) > 1 and self.parallel > 1:
            with ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="push") as pool:
                for job in [pool.submit(self._blob, b) for b in blobs]:
                    job.result()  # the first failure
        else:  # one layer: nothing to overlap, and threads cost (their start, the GIL between them: ~4 ms)
            for blob in blobs:
                self._blob(blob)
        self.places.note(self.registry.host, self.repository, [b.digest for b in blobs])
        with self.registry.request(
            "PUT",
            f"/v2/{self.repository}/manifests/{tag}",
            self.scopes,
            body=manifest,
            headers={"Content-Type": MEDIA_MANIFEST},
            ok=(201,),
            what=f"{self.where}:{tag}",
        ) as resp:
            said = resp.header("Docker-Content-Digest")
        if said and said != digest:
            raise DigestMismatch(f"{self.where}:{tag}: the registry took the manifest as {said}, not {digest}")
        return digest

    def _report(self, blob: Blob, done: int) -> None:
        if self._progress is not None and blob.label is not None:
            self._progress(blob.label, done, blob.size)

    def _tagged(self, tag: str) -> str | None:
        """The digest of the manifest ``tag`` names in the registry now, if it names one (None also
        when the registry will not say: the manifest is then sent, which tells what is wrong)."""
        try:
            with self.registry.request(
                "HEAD",
                f"/v2/{self.repository}/manifests/{tag}",
                self.scopes,
                headers={"Accept": MEDIA_MANIFEST},
                ok=(200, 404),
                what=f"{self.where}:{tag}",
            ) as resp:
                said = resp.header("Docker-Content-Digest")
        except (RegistryError, NotFound):
            return None
        return said if resp.status == 200 and said else None

    def _blob(self, blob: Blob) -> None:
        """One blob, tried again from where the registry stands when the connection drops."""
        failures = 0
        while True:
            try:
                self._blob_once(blob)
                return
            except Interrupted as e:
                failures += 1
                if failures > RETRIES:
                    saved = self.sessions.get(self.registry.host, self.repository, blob.digest)
                    raise Interrupted(
                        f"{self.where}: blob {blob.digest}: {e} ({failures} tries; "
                        f"{saved[1] if saved else 0} of {blob.size} bytes are in the registry: "
                        "push again to resume)"
                    ) from None
                time.sleep(_BACKOFF * 2 ** (failures - 1))

    def _blob_once(self, blob: Blob) -> None:
        with self.registry.request(
            "HEAD",
            f"/v2/{self.repository}/blobs/{blob.digest}",
            self.scopes,
            ok=(200, 404),
            what=f"{self.where}: blob {blob.digest}",
        ) as head:
            if head.status == 200:  # the repository has it
                self._report(blob, blob.size)
                return
        # the chunks of an upload begun before (by this push or an earlier one) that the registry has
        if resumed := self._resumed(blob):
            location, offset = resumed
        else:
            self._report(blob, 0)
            mounted, found = self._mount(blob)  # a refused mount may begin a session
            if mounted:
                self._report(blob, blob.size)
                return
            location, offset = found or self._begin(), 0
        self._send(blob, location, offset)
        self.sessions.drop(self.registry.host, self.repository, blob.digest)
        self._report(blob, blob.size)

    def _resumed(self, blob: Blob) -> tuple[str, int] | None:
        saved = self.sessions.get(self.registry.host, self.repository, blob.digest)
        if saved is None:
            return None
        state = self._status(*saved)
        if state is None:
            self.sessions.drop(self.registry.host, self.repository, blob.digest)
        return state

    def _mount(self, blob: Blob) -> tuple[bool, str | None]:
        """(mounted, else the upload session a refused mount began, if any)."""
        for other in self.places.repositories(self.registry.host, blob.digest):
            if other == self.repository:
                continue
            query = urllib.parse.urlencode({"mount": blob.digest, "from": other})
            with self.registry.request(
                "POST",
                f"/v2/{self.repository}/blobs/uploads/?{query}",
                (*self.scopes, scope_of(other, "pull")),
                ok=(201, 202, 401, 403, 404),
                what=self.where,
            ) as resp:
                if resp.status == 201:
                    return True, None
                if resp.status == 202 and resp.header("Location"):
                    return False, self._absolute(resp.header("Location"))
        return False, None

    def _begin(self) -> str:
        with self.registry.request(
            "POST", f"/v2/{self.repository}/blobs/uploads/", self.scopes, ok=(202,), what=self.where
        ) as resp:
            location = resp.header("Location")
        if not location:
            raise RegistryError(f"{self.where}: the registry gave no upload location")
        return self._absolute(location)

    def _status(self, location: str, offset: int) -> tuple[str, int] | None:
        """Where the session stands, by the registry: (its latest location, the next byte), or None
        if the registry no longer has it. ``offset`` settles ``Range: 0-0`` (nothing, or one byte).
        ``Interrupted`` if the registry cannot be asked."""
        try:
            with self.registry.request("GET", location, self.scopes, ok=(204,), what=self.where) as resp:
                last = resp.header("Range").rpartition("-")[2]
                where = resp.header("Location") or location
        except Interrupted:
            raise
        except (RegistryError, NotFound):
            return None
        if not last.isdigit():
            return None
        end = int(last) + 1 if int(last) > 0 else (1 if offset == 1 else 0)
        return self._absolute(where), end

    def _absolute(self, location: str) -> str:
        return urllib.parse.urljoin(self.registry.transport.base + "/", location)

    def _send(self, blob: Blob, location: str, offset: int) -> None:
        """The blob from ``offset``: whole in the PUT if small, else in acknowledged chunks."""
        host = self.registry.host
        octets = {"Content-Type": "application/octet-stream"}
        if blob.size <= CHUNK and offset == 0:
            self._finish(blob, location, {**octets, "Content-Length": str(blob.size)}, blob.open)
            return
        while offset < blob.size:
            n = min(CHUNK, blob.size - offset)
            start = offset

            def body(start: int = start, n: int = n) -> BinaryIO:
                return _Slice(blob.open(), start, n)  # type: ignore[return-value]

            with self.registry.request(
                "PATCH",
                location,
                self.scopes,
                body=body,
                ok=(202,),
                retry=False,
                what=f"{self.where}: blob {blob.digest}",
                headers={**octets, "Content-Range": f"{start}-{start + n - 1}", "Content-Length": str(n)},
            ) as resp:
                location = self._absolute(resp.header("Location") or location)
            offset += n
            self.sessions.save(host, self.repository, blob.digest, location, offset)
            self._report(blob, offset)
        self._finish(blob, location, {"Content-Length": "0"}, None)

    def _finish(self, blob: Blob, location: str, headers: dict[str, str], body: Callable[[], BinaryIO] | None) -> None:
        parts = urllib.parse.urlsplit(location)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True) + [("digest", blob.digest)]
        url = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
        with self.registry.request(
            "PUT",
            url,
            self.scopes,
            body=body if body is not None else b"",
            ok=(201,),
            headers=headers,
            retry=body is None,
            what=f"{self.where}: blob {blob.digest}",
        ):
            pass
