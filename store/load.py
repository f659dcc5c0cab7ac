"""Read every ``docker save`` generation and OCI layouts into a plan of images to add.

Formats (recognised by their files, not by a version field):
  - Docker >= 1.10, Docker >= 25 and skopeo ``docker-archive:``: ``manifest.json`` lists each image's
    config and layer paths (v25 points into ``blobs/sha256``; skopeo's ``<id>/layer.tar`` are symlinks).
  - OCI image layouts (dirs and ``oci-archive:`` tars): ``index.json`` -> manifests -> blobs.
  - Docker <= 1.9: ``<id>/json`` (with its ``parent``), ``<id>/layer.tar`` and ``repositories``; each
    layer becomes an image whose parent is the layer below, as Docker's own legacy loader does.

Every blob is checked against its digest and every layer against its diff_id while it is staged.
"""

from __future__ import annotations

import json
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .digest import check_digest, hex_of, sha256_bytes
from .errors import BadInput, DigestMismatch, NotFound
from .images import parse_ref, validate_config
from .sources import Source

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
_LAYER_TYPES = re.compile(
    r"^application/vnd\.(oci\.image\.layer\.v1\.tar(\+gzip|\+zstd)?"
    r"|docker\.image\.rootfs\.diff\.tar\.gzip|oci\.image\.layer\.nondistributable\.v1\.tar(\+gzip|\+zstd)?)$"
)


@dataclass
class LayerRef:
    member: str  # path of the layer blob inside the source
    diff_id: str | None  # None for legacy layers: learnt while staging
    blob_digest: str | None  # known when the member is named by its digest


@dataclass
class ImagePlan:
    """One image to add: its config (or how to build it, for legacy) and where its layers are."""

    layers: list[LayerRef]
    tags: list[str]
    config: bytes | None = None
    make_config: Callable[[list[str]], bytes] | None = None  # diff_ids -> config (legacy)
    parent_index: int | None = None  # index into the plan list
    parent_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _json(source: Source, name: str) -> Any:
    raw = source.read(name)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadInput(f"{source.where}: malformed JSON in {name} ({e})") from None


def _tags(values: object, where: str) -> list[str]:
    if values is None:
        return []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise BadInput(f"{where}: RepoTags is not a list of strings")
    out = []
    for v in values:
        name, tag = parse_ref(v)
        out.append(f"{name}:{tag}")
    return out


def plan(source: Source) -> list[ImagePlan]:
    if source.exists("manifest.json"):
        return _plan_docker(source)
    if source.exists("index.json"):
        return _plan_oci(source)
    if source.exists("repositories"):
        return _plan_legacy(source)
    raise BadInput(f"{source.where}: not an image archive (no manifest.json, index.json or repositories)")


# -- Docker >= 1.10 -------------------------------------------------------------------------------
_HEX_IN_NAME = re.compile(r"(?:^|/)(?:sha256[:/])?([0-9a-f]{64})(?:\.json|\.tar|/layer\.tar)?$")


def _plan_docker(source: Source) -> list[ImagePlan]:
    manifest = _json(source, "manifest.json")
    if not isinstance(manifest, list) or not manifest:
        raise BadInput(f"{source.where}: manifest.json is not a non-empty list")
    plans: list[ImagePlan] = []
    for entry in manifest:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
            raise BadInput(f"{source.where}: manifest.json entry without a Config")
        layers = entry.get("Layers")
        if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
            raise BadInput(f"{source.where}: manifest.json entry without a Layers list")
        config = source.read(entry["Config"])
        image_id = sha256_bytes(config)
        m = _HEX_IN_NAME.search(entry["Config"])
        if m and "sha256:" + m.group(1) != image_id:
            raise DigestMismatch(f"{source.where}: config {entry['Config']} hashes to {image_id}")
        parsed = validate_config(config, f"{source.where}: {entry['Config']}")
        diff_ids = parsed["rootfs"]["diff_ids"]
        if len(diff_ids) != len(layers):
            raise BadInput(f"{source.where}: {entry['Config']} has {len(diff_ids)} diff_ids but {len(layers)} layers")
        refs = []
        for path, diff_id in zip(layers, diff_ids, strict=True):
            # v25 names layer blobs blobs/sha256/<digest>: that digest is checked too.
            blob = None
            if path.startswith("blobs/sha256/"):
                blob = check_digest("sha256:" + path.rsplit("/", 1)[1], f"{source.where}: {path}")
            refs.append(LayerRef(path, diff_id, blob))
        parent = entry.get("Parent")
        plans.append(
            ImagePlan(
                layers=refs,
                tags=_tags(entry.get("RepoTags"), source.where),
                config=config,
                parent_id=check_digest(parent, f"{source.where}: Parent") if parent else None,
            )
        )
    return plans


# -- OCI layout -----------------------------------------------------------------------------------
def _blob(source: Source, desc: object, what: str, limit: int = 64 << 20) -> bytes:
    if not isinstance(desc, dict):
        raise BadInput(f"{source.where}: {what} descriptor is not an object")
    digest = check_digest(desc.get("digest"), f"{source.where}: {what} digest")
    name = f"blobs/sha256/{hex_of(digest)}"
    data = source.read(name, limit)
    if sha256_bytes(data) != digest:
        raise DigestMismatch(f"{source.where}: {name} does not hash to its digest")
    if desc.get("size") is not None and desc.get("size") != len(data):
        raise BadInput(f"{source.where}: {name} is {len(data)} bytes, its descriptor says {desc.get('size')}")
    return data


def _host_platform() -> tuple[str, str]:
    machine = platform.machine()
    return "linux", {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


def _manifests(source: Source, index: Any, depth: int = 0) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(descriptor from the top index, manifest) for each image the index names."""
    if depth > 4 or not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise BadInput(f"{source.where}: malformed image index")
    out = []
    for desc in index["manifests"]:
        if not isinstance(desc, dict):
            raise BadInput(f"{source.where}: malformed index descriptor")
        media = desc.get("mediaType")
        data = _blob(source, desc, "manifest")
        try:
            doc = json.loads(data)
        except ValueError as e:
            raise BadInput(f"{source.where}: malformed manifest JSON ({e})") from None
        if media in INDEX_TYPES or (media is None and isinstance(doc, dict) and "manifests" in doc):
            inner = _manifests(source, doc, depth + 1)
            want = _host_platform()
            match = [
                m
                for d, m in inner
                if (d.get("platform") or {}).get("os") == want[0]
                and (d.get("platform") or {}).get("architecture") == want[1]
            ]
            chosen = match[0] if match else inner[0][1] if inner else None
            if chosen is not None:
                out.append((desc, chosen))
        elif media in MANIFEST_TYPES or media is None:
            out.append((desc, doc))
        else:
            raise BadInput(f"{source.where}: unsupported manifest media type {media!r}")
    return out


def _oci_tags(desc: dict[str, Any]) -> list[str]:
    notes = desc.get("annotations") or {}
    for key in ("io.containerd.image.name", "org.opencontainers.image.ref.name"):
        value = notes.get(key)
        if isinstance(value, str) and (":" in value or "/" in value):
            name, tag = parse_ref(value)
            return [f"{name}:{tag}"]
    return []


def _plan_oci(source: Source) -> list[ImagePlan]:
    index = _json(source, "index.json")
    plans: dict[str, ImagePlan] = {}
    for desc, manifest in _manifests(source, index):
        if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), list):
            raise BadInput(f"{source.where}: manifest without layers")
        config = _blob(source, manifest.get("config"), "config")
        image_id = sha256_bytes(config)
        parsed = validate_config(config, f"{source.where}: config {image_id}")
        diff_ids = parsed["rootfs"]["diff_ids"]
        if len(diff_ids) != len(manifest["layers"]):
            raise BadInput(f"{source.where}: manifest has {len(manifest['layers'])} layers, config {len(diff_ids)}")
        refs = []
        for layer, diff_id in zip(manifest["layers"], diff_ids, strict=True):
            if not isinstance(layer, dict):
                raise BadInput(f"{source.where}: malformed layer descriptor")
            media = layer.get("mediaType", "")
            if not _LAYER_TYPES.match(media):
                raise BadInput(f"{source.where}: unsupported layer media type {media!r}")
            digest = check_digest(layer.get("digest"), f"{source.where}: layer digest")
            member = f"blobs/sha256/{hex_of(digest)}"
            if layer.get("size") is not None and source.size(member) != layer["size"]:
                raise BadInput(
                    f"{source.where}: {member} is {source.size(member)} bytes, its descriptor says {layer['size']}"
                )
            refs.append(LayerRef(member, diff_id, digest))
        if image_id in plans:
            plans[image_id].tags.extend(t for t in _oci_tags(desc) if t not in plans[image_id].tags)
        else:
            plans[image_id] = ImagePlan(layers=refs, tags=_oci_tags(desc), config=config)
    if not plans:
        raise BadInput(f"{source.where}: the index names no image")
    return list(plans.values())


# -- Docker <= 1.9 ---------------------------------------------------------------------------------
_V1_ID = re.compile(r"^[0-9a-f]{64}$")


def _legacy_config(v1: dict[str, Any], history: list[dict[str, Any]]) -> Callable[[list[str]], bytes]:
    """Docker's MakeConfigFromV1Config: the top layer's json minus its v1 fields, plus rootfs."""

    def make(diff_ids: list[str]) -> bytes:
        config = {
            k: v for k, v in v1.items() if k not in ("id", "parent", "Size", "parent_id", "layer_id", "throwaway")
        }
        config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
        config["history"] = history
        return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()

    return make


def _plan_legacy(source: Source) -> list[ImagePlan]:
    repos = _json(source, "repositories")
    if not isinstance(repos, dict):
        raise BadInput(f"{source.where}: repositories is not an object")
    wanted: dict[str, list[str]] = {}
    for name, tags in repos.items():
        if not isinstance(tags, dict):
            raise BadInput(f"{source.where}: repositories[{name!r}] is not an object")
        for tag, layer_id in tags.items():
            if not isinstance(layer_id, str) or not _V1_ID.match(layer_id):
                raise BadInput(f"{source.where}: repositories names a bad layer id {layer_id!r}")
            repo, t = parse_ref(f"{name}:{tag}")
            wanted.setdefault(layer_id, []).append(f"{repo}:{t}")
    plans: list[ImagePlan] = []
    by_layer: dict[str, int] = {}

    def add(layer_id: str, seen: tuple[str, ...] = ()) -> int:
        if layer_id in by_layer:
            return by_layer[layer_id]
        if layer_id in seen or len(seen) > 256:
            raise BadInput(f"{source.where}: parent chain of {layer_id[:12]} loops")
        try:
            v1 = _json(source, f"{layer_id}/json")
        except NotFound:
            raise BadInput(f"{source.where}: layer {layer_id[:12]} has no json") from None
        if not isinstance(v1, dict) or v1.get("id") != layer_id:
            raise BadInput(f"{source.where}: {layer_id[:12]}/json does not describe layer {layer_id[:12]}")
        parent = v1.get("parent")
        parent_index = None
        below: list[LayerRef] = []
        history: list[dict[str, Any]] = []
        if parent:
            if not isinstance(parent, str) or not _V1_ID.match(parent):
                raise BadInput(f"{source.where}: {layer_id[:12]}/json has a bad parent")
            parent_index = add(parent, seen + (layer_id,))
            below = list(plans[parent_index].layers)
            history = list(plans[parent_index].extra["history"])
        cmd = ((v1.get("container_config") or {}).get("Cmd")) or []
        entry = {"created": v1.get("created", ""), "created_by": " ".join(map(str, cmd))}
        for key in ("author", "comment"):
            if v1.get(key):
                entry[key] = v1[key]
        history = history + [entry]
        p = ImagePlan(
            layers=below + [LayerRef(f"{layer_id}/layer.tar", None, None)],
            tags=wanted.get(layer_id, []),
            make_config=_legacy_config(v1, history),
            parent_index=parent_index,
            extra={"history": history},
        )
        plans.append(p)
        by_layer[layer_id] = len(plans) - 1
        return by_layer[layer_id]

    for layer_id in sorted(wanted):
        add(layer_id)
    return plans
