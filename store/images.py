"""Images, their records and tags.

An image is its config blob (``blobs/sha256/<id hex>``; the image id is the config's digest) plus a
record ``images/<id hex>.json`` (parent image, when it was added). Writing the record is the last
step of adding an image, so an image is visible only once all its layers are. Tags live in
``repositories.json`` in Docker's own shape: ``{"Repositories": {"busybox": {"busybox:latest": id}}}``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .blobs import Blobs
from .digest import chain_ids, check_digest, hex_of, is_digest
from .errors import BadInput, InvalidReference, NotFound
from .layers import Layers
from .root import Root, Transaction, read_json, write_json

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = (
    r"(?:localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+|[A-Za-z0-9-]+:[0-9]+|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+:[0-9]+)"
)
_NAME = re.compile(rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_HEXPREFIX = re.compile(r"^(?:sha256:)?[0-9a-f]{1,64}$")


def familiar(ref: str) -> str:
    """Docker's familiar form of a reference (its ``FamiliarString``): ``docker.io/library/busybox``,
    ``library/busybox`` and ``docker.io/busybox`` are all ``busybox``; ``docker.io/you/app`` is ``you/app``."""
    for prefix in ("docker.io/", "index.docker.io/"):
        if ref.startswith(prefix):
            ref = ref[len(prefix) :]
            break
    if ref.startswith("library/") and "/" not in ref[len("library/") :]:  # only official images are library/
        ref = ref[len("library/") :]
    return ref


def parse_ref(ref: str) -> tuple[str, str]:
    """``name[:tag]`` -> (name, tag), in the familiar form; the tag defaults to ``latest`` as in Docker."""
    ref = familiar(ref)
    name, tag = ref, "latest"
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        name, tag = ref[:colon], ref[colon + 1 :]
    if not name or len(name) > 255 or not _NAME.match(name):
        raise InvalidReference(f"invalid reference format: {ref!r} (repository names are lowercase)")
    if not _TAG.match(tag):
        raise InvalidReference(f"invalid tag in {ref!r}")
    return name, tag


def parse_time(value: str) -> datetime:
    """RFC 3339 with up to nanoseconds (as Go writes it) -> aware datetime."""
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", value or "")
    if not m:
        raise ValueError(f"bad time {value!r}")
    frac = (m.group(2) or ".0")[:7]
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.fromisoformat(m.group(1) + frac + zone)


def format_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now() -> str:
    return format_time(datetime.now(UTC))


@dataclass(frozen=True)
class ImageRecord:
    id: str
    parent: str | None
    added: str


def validate_config(raw: bytes, where: str) -> dict[str, Any]:
    """Parse an image config and check what the store relies on: rootfs.diff_ids and history."""
    try:
        config = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadInput(f"{where}: malformed image config JSON ({e})") from None
    if not isinstance(config, dict):
        raise BadInput(f"{where}: image config is not a JSON object")
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
        raise BadInput(f"{where}: image config has no rootfs.diff_ids")
    for d in rootfs["diff_ids"]:
        check_digest(d, f"{where}: rootfs.diff_ids")
    history = config.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise BadInput(f"{where}: image config history is not a list of objects")
    if history:
        nonempty = sum(1 for h in history if not h.get("empty_layer"))
        if nonempty != len(rootfs["diff_ids"]):
            raise BadInput(
                f"{where}: history has {nonempty} layer entries but rootfs has {len(rootfs['diff_ids'])} layers"
            )
    if "config" in config and config["config"] is not None and not isinstance(config["config"], dict):
        raise BadInput(f"{where}: image config 'config' is not an object")
    return config


class Images:
    def __init__(self, root: Root, blobs: Blobs, layers: Layers) -> None:
        self.root = root
        self.blobs = blobs
        self.layers = layers

    # -- reading ----------------------------------------------------------------------------------
    def _record_path(self, image_id: str) -> str:
        return os.path.join(self.root.images, hex_of(image_id) + ".json")

    def ids(self) -> list[str]:
        try:
            names = os.listdir(self.root.images)
        except FileNotFoundError:
            return []
        return sorted("sha256:" + n[:-5] for n in names if n.endswith(".json") and len(n) == 69)

    def exists(self, image_id: str) -> bool:
        return os.path.exists(self._record_path(image_id))

    def record(self, image_id: str) -> ImageRecord:
        try:
            return ImageRecord(**read_json(self._record_path(image_id)))
        except FileNotFoundError:
            raise NotFound(f"No such image: {image_id}") from None

    def config(self, image_id: str) -> dict[str, Any]:
        return validate_config(self.blobs.read(image_id), f"image {image_id}")

    def chain(self, image_id: str) -> list[str]:
        return chain_ids(self.config(image_id)["rootfs"]["diff_ids"])

    def size(self, image_id: str) -> int:
        return sum(self.layers.info(c).size for c in self.chain(image_id))

    def repositories(self) -> dict[str, dict[str, str]]:
        try:
            data = read_json(self.root.repositories)
        except FileNotFoundError:
            return {}
        repos = data.get("Repositories", {})
        return repos if isinstance(repos, dict) else {}

    def tags(self) -> dict[str, str]:
        """Every ``name:tag`` -> image id."""
        return {ref: iid for repo in self.repositories().values() for ref, iid in repo.items()}

    def tags_by_image(self) -> dict[str, list[str]]:
        """Image id -> its tags, sorted (one read of repositories.json for every image)."""
        out: dict[str, list[str]] = {}
        for ref, iid in sorted(self.tags().items()):
            out.setdefault(iid, []).append(ref)
        return out

    def tags_of(self, image_id: str) -> list[str]:
        return self.tags_by_image().get(image_id, [])

    def children(self, image_id: str) -> list[str]:
        return [i for i in self.ids() if self.record(i).parent == image_id]

    def resolve(self, ref: str) -> str:
        """A tag, a full id or a unique id prefix (with or without ``sha256:``) -> image id."""
        tags = self.tags()
        try:
            full: str | None = "{}:{}".format(*parse_ref(ref))
        except InvalidReference:
            full = None  # maybe an id: "sha256:…" is not a valid name
        if full in tags:  # a tag wins over an id prefix that spells the same, as in Docker
            return tags[full]
        if _HEXPREFIX.match(ref):
            hexpart = ref.split(":", 1)[-1]
            matches = [i for i in self.ids() if hex_of(i).startswith(hexpart)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise InvalidReference(f"ambiguous image id prefix {ref!r}: matches {len(matches)} images")
        if full is None and not _HEXPREFIX.match(ref):
            parse_ref(ref)  # raises the reference's own error
        raise NotFound(f"No such image: {full or ref}")

    # -- writing (callers hold the writer lock) ---------------------------------------------------
    def publish(self, txn: Transaction, image_id: str, parent: str | None) -> bool:
        """Write the image record (the step that makes the image visible). False if it existed."""
        check_digest(image_id, "image id")
        if self.exists(image_id):
            return False
        staged = txn.new_path("image.json")
        write_json(staged, {"id": image_id, "parent": parent, "added": now()})
        return txn.publish(staged, self._record_path(image_id))

    def set_tag(self, ref: str, image_id: str) -> str | None:
        """Point ``ref`` at ``image_id``; return the image it pointed to before (if another)."""
        name, tag = parse_ref(ref)
        repos = self.repositories()
        repo = repos.setdefault(name, {})
        old = repo.get(f"{name}:{tag}")
        if old != image_id:
            repo[f"{name}:{tag}"] = image_id
            write_json(self.root.repositories, {"Repositories": repos})
        return old if old != image_id else None

    def untag(self, ref: str) -> str:
        name, tag = parse_ref(ref)
        repos = self.repositories()
        full = f"{name}:{tag}"
        if full not in repos.get(name, {}):
            raise NotFound(f"No such image: {full}")
        image_id = repos[name].pop(full)
        if not repos[name]:
            del repos[name]
        write_json(self.root.repositories, {"Repositories": repos})
        return image_id

    def remove_unheld_parents(self, parent: str | None, holders: Callable[[str], list[str]] | None) -> list[str]:
        """Remove ``parent`` and its own parents in turn while nothing holds them (no tag, no child,
        no user that ``holders`` names); return the ids removed."""
        removed = []
        while (
            parent
            and self.exists(parent)
            and not self.tags_of(parent)
            and not self.children(parent)
            and not (holders(parent) if holders else [])
        ):
            above = self.record(parent).parent
            self.remove_record(parent)
            removed.append(parent)
            parent = above
        return removed

    def remove_record(self, image_id: str) -> None:
        try:
            os.unlink(self._record_path(image_id))
        except FileNotFoundError:
            pass
        # Children keep existing; they lose their parent link, as in Docker.
        for child in self.children(image_id):
            rec = self.record(child)
            write_json(self._record_path(child), {"id": rec.id, "parent": None, "added": rec.added})

    def in_use(self) -> tuple[set[str], set[str]]:
        """(chain ids, blob digests) referenced by some image."""
        chains: set[str] = set()
        blobs: set[str] = set()
        for image_id in self.ids():
            blobs.add(image_id)
            try:
                chains.update(self.chain(image_id))
            except (NotFound, BadInput):
                continue
        for chain in list(chains):
            try:
                blobs.add(self.layers.info(chain).blob)
            except NotFound:
                pass
        return chains, blobs

    def gc(self, txn: Transaction) -> tuple[list[str], list[str]]:
        """Free layers and blobs no image uses any more; return what was removed."""
        chains, blobs = self.in_use()
        gone_layers = [c for c in self.layers.all() if c not in chains]
        for chain in gone_layers:
            self.layers.remove(txn, chain)
        gone_blobs = [b for b in self.blobs.all() if is_digest(b) and b not in blobs]
        for blob in gone_blobs:
            self.blobs.remove(blob)
        return gone_layers, gone_blobs
