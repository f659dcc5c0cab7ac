"""Where blobs are known to be in registries: ``ROOT/places/sha256/<hex>``, one ``host/repository`` a
line, noted when a pull fetches a blob from there or a push puts it there. A push to another
repository of the same registry asks it to mount the blob from one of those instead of sending it
(containers/image keeps the same knowledge in its blob info cache).

A hint, never trusted: a mount the registry refuses is an upload. Lines are appended with one
``write`` (O_APPEND), so concurrent pushes need no lock; ``rmi``'s collection does not look here.
"""

from __future__ import annotations

import os

from .digest import hex_of


class Places:
    def __init__(self, directory: str) -> None:
        self.directory = directory

    def _path(self, digest: str) -> str:
        return os.path.join(self.directory, "sha256", hex_of(digest))

    def repositories(self, host: str, digest: str) -> list[str]:
        """Repositories of ``host`` known to hold ``digest``, most recent first."""
        repos = [line.split("/", 1)[1] for line in reversed(self._lines(digest)) if line.startswith(host + "/")]
        return list(dict.fromkeys(repos))

    def note(self, host: str, repository: str, digests: list[str]) -> None:
        line = f"{host}/{repository}\n"
        os.makedirs(os.path.join(self.directory, "sha256"), exist_ok=True)
        for digest in digests:
            if f"{host}/{repository}" in self._lines(digest):
                continue
            fd = os.open(self._path(digest), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)

    def _lines(self, digest: str) -> list[str]:
        try:
            with open(self._path(digest)) as f:
                return f.read().splitlines()
        except (FileNotFoundError, NotADirectoryError):
            return []
