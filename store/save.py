"""Write images as the Docker >= 25 dual layout: an OCI image layout plus ``manifest.json`` and
``repositories``, which old and new ``docker load`` and skopeo read.

Layers are written uncompressed, named by their diff_id, as Docker 25 does; every entry has mtime 0,
owner 0:0, sorted names: the same images always give the same bytes.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, BinaryIO

from .compression import decompressing
from .digest import HashingReader, hex_of, sha256_bytes
from .layers import MEDIA_TAR, Layers
from .root import Root

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"


@dataclass
class SaveItem:
    image_id: str
    tags: list[str]
    chain: list[str]


def qualified(name: str) -> str:
    """Docker's fully qualified spelling: ``busybox`` -> ``docker.io/library/busybox``."""
    first = name.split("/", 1)[0]
    if "/" in name and ("." in first or ":" in first or first == "localhost"):
        return name
    return f"docker.io/{name}" if "/" in name else f"docker.io/library/{name}"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _info(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if directory:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    else:
        info.size, info.mode = size, 0o644
    return info


class _LayerReader:
    """The uncompressed tar of a stored layer, checked against its diff_id as it is read."""

    def __init__(self, root: Root, layers: Layers, chain: str) -> None:
        self.info = layers.info(chain)
        self._raw = open(layers.blobs.path(self.info.blob), "rb")
        _kind, plain = decompressing(self._raw, f"layer {chain}")
        self._hashed = HashingReader(plain)

    def read(self, n: int = -1) -> bytes:
        # tarfile wants full reads: a short one reads as the end of the data.
        parts, want = [], n
        while want:
            chunk = self._hashed.read(want)
            if not chunk:
                break
            parts.append(chunk)
            want = want - len(chunk) if want > 0 else -1
        data = b"".join(parts)
        if not data or self._hashed.count == self.info.tar_size:
            self._hashed.verify(self.info.diff_id, f"stored layer {self.info.chain_id}")
        return data

    def close(self) -> None:
        self._raw.close()


def write_archive(
    items: list[SaveItem],
    root: Root,
    layers: Layers,
    config_bytes: Callable[[str], bytes],
    out: BinaryIO,
    progress: Callable[[int], None] | None = None,
) -> None:
    blobs: dict[str, tuple[int, Callable[[], Any]]] = {}  # digest -> (size, opener of a reader)
    index: list[dict[str, Any]] = []
    manifest_json: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    for item in items:
        config = config_bytes(item.image_id)
        blobs[item.image_id] = (len(config), partial(io.BytesIO, config))
        layer_descs = []
        for chain in item.chain:
            info = layers.info(chain)
            blobs.setdefault(info.diff_id, (info.tar_size, partial(_LayerReader, root, layers, chain)))
            layer_descs.append({"mediaType": MEDIA_TAR, "digest": info.diff_id, "size": info.tar_size})
        manifest = _dumps(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_MANIFEST,
                "config": {"mediaType": MEDIA_CONFIG, "digest": item.image_id, "size": len(config)},
                "layers": layer_descs,
            }
        )
        mdigest = sha256_bytes(manifest)
        blobs[mdigest] = (len(manifest), partial(io.BytesIO, manifest))
        desc = {"mediaType": MEDIA_MANIFEST, "digest": mdigest, "size": len(manifest)}
        for tag in item.tags or [""]:
            entry = dict(desc)
            if tag:
                name, t = tag.rsplit(":", 1)
                entry["annotations"] = {
                    "io.containerd.image.name": f"{qualified(name)}:{t}",
                    "org.opencontainers.image.ref.name": t,
                }
                if item.chain:
                    repositories.setdefault(name, {})[t] = hex_of(layers.info(item.chain[-1]).diff_id)
            index.append(entry)
        manifest_json.append(
            {
                "Config": f"blobs/sha256/{hex_of(item.image_id)}",
                "RepoTags": item.tags or None,
                "Layers": [f"blobs/sha256/{hex_of(layers.info(c).diff_id)}" for c in item.chain],
            }
        )
    small = {
        "index.json": _dumps({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": index}),
        "manifest.json": _dumps(manifest_json),
        "oci-layout": _dumps({"imageLayoutVersion": "1.0.0"}),
        "repositories": _dumps(repositories),
    }
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        tar.copybufsize = 1 << 20  # type: ignore[attr-defined]  # real attribute, missing from typeshed
        tar.addfile(_info("blobs/", directory=True))
        tar.addfile(_info("blobs/sha256/", directory=True))
        for digest in sorted(blobs):
            size, opener = blobs[digest]
            reader = opener()
            try:
                tar.addfile(_info(f"blobs/sha256/{hex_of(digest)}", size), reader)
            finally:
                reader.close()
            if progress:
                progress(size)
        for name in sorted(small):
            tar.addfile(_info(name, len(small[name])), io.BytesIO(small[name]))
