"""The store's views, read-only, as the CLI prints them: history rows, the layer tree, inspect
documents, and the consistency check (every blob's digest, every layer's chain and content)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from .compression import decompressing
from .digest import HashingReader, chain_ids
from .errors import StoreError
from .images import validate_config

if TYPE_CHECKING:
    from .store import Store


@dataclass
class HistoryRow:
    id: str | None  # image id for rows that are the top of a local image, else None (<missing>)
    created: str
    created_by: str
    size: int
    comment: str
    empty_layer: bool


@dataclass
class TreeNode:
    chain_id: str
    size: int
    virtual_size: int
    tags: list[str]
    images: list[str]  # ids of images whose top layer this is
    children: list[TreeNode] = field(default_factory=list)


def diff_id_of(raw: BinaryIO, where: str) -> str:
    """The digest of a layer blob's uncompressed tar (``raw`` is closed after)."""
    with raw:
        _kind, plain = decompressing(raw, where)
        hashed = HashingReader(plain)
        hashed.drain()
        return hashed.digest


def history(store: Store, ref: str) -> list[HistoryRow]:
    """Newest first, like ``docker history``."""
    image_id = store.images.resolve(ref)
    config = store.images.config(image_id)
    chain = chain_ids(config["rootfs"]["diff_ids"])
    entries = config.get("history") or [{} for _ in chain]
    tops: dict[int, str] = {}  # history index -> image id of the ancestor whose top it is
    ancestor: str | None = image_id
    while ancestor is not None and store.images.exists(ancestor):
        tops.setdefault(len(store.images.config(ancestor).get("history") or []) - 1, ancestor)
        ancestor = store.images.record(ancestor).parent
    tops[len(entries) - 1] = image_id
    rows = []
    layer = 0
    for i, h in enumerate(entries):
        size = 0
        if not h.get("empty_layer"):
            size = store.layers.info(chain[layer]).size if store.layers.exists(chain[layer]) else 0
            layer += 1
        rows.append(
            HistoryRow(
                tops.get(i),
                h.get("created", ""),
                h.get("created_by", ""),
                size,
                h.get("comment", ""),
                bool(h.get("empty_layer")),
            )
        )
    return rows[::-1]


def tree(store: Store) -> list[TreeNode]:
    nodes: dict[str, TreeNode] = {}
    roots: list[TreeNode] = []
    tags = store.images.tags_by_image()
    for image_id in store.images.ids():
        chain = store.images.chain(image_id)
        virtual = 0
        for c in chain:
            info = store.layers.info(c)
            virtual += info.size
            if c not in nodes:
                nodes[c] = TreeNode(c, info.size, virtual, [], [])
                (nodes[info.parent].children if info.parent else roots).append(nodes[c])
        if chain:
            nodes[chain[-1]].tags.extend(tags.get(image_id, []))
            nodes[chain[-1]].images.append(image_id)
    return sorted(roots, key=lambda n: n.chain_id)


def inspect_image(store: Store, ref: str) -> dict[str, Any]:
    image_id = store.images.resolve(ref)
    config = store.images.config(image_id)
    record = store.images.record(image_id)
    chain = store.images.chain(image_id)
    dirs = [store.layers.diff_dir(c) for c in reversed(chain)]
    history = config.get("history") or []
    return {
        "Id": image_id,
        "RepoTags": store.images.tags_of(image_id),
        "RepoDigests": [],
        "Parent": record.parent or "",
        "Comment": (history[-1].get("comment", "") if history else ""),
        "Created": config.get("created", ""),
        "Author": config.get("author", ""),
        "Config": config.get("config") or {},
        "Architecture": config.get("architecture", ""),
        "Os": config.get("os", ""),
        "Size": store.images.size(image_id),
        "GraphDriver": {
            "Name": "strata",
            "Data": {"UpperDir": dirs[0] if dirs else "", "LowerDir": ":".join(dirs[1:])},
        },
        "RootFS": {"Type": "layers", "Layers": config["rootfs"]["diff_ids"]},
        "History": history,
        "Metadata": {"LastTagTime": record.added},
    }


def check(store: Store) -> list[str]:
    """Verify every blob, layer chain, image and tag. Returns the problems found."""
    problems: list[str] = []
    for digest in store.blobs.all():
        if not store.blobs.verify(digest):
            problems.append(f"blob {digest}: content does not match its digest")
    for chain in store.layers.all():
        found = store.layers.check_chain(chain)
        problems.extend(found)
        if not found:
            info = store.layers.info(chain)
            try:
                if diff_id_of(store.blobs.open(info.blob), f"layer {chain}") != info.diff_id:
                    problems.append(f"layer {chain}: blob {info.blob} does not unpack to diff_id {info.diff_id}")
            except StoreError as e:
                problems.append(f"layer {chain}: {e}")
    for image_id in store.images.ids():
        try:
            config = validate_config(store.blobs.read(image_id), f"image {image_id}")
        except StoreError as e:
            problems.append(f"image {image_id}: {e}")
            continue
        for c in chain_ids(config["rootfs"]["diff_ids"]):
            if not store.layers.exists(c):
                problems.append(f"image {image_id}: layer {c} is missing")
        parent = store.images.record(image_id).parent
        if parent and not store.images.exists(parent):
            problems.append(f"image {image_id}: parent image {parent} is missing")
    for ref, image_id in store.images.tags().items():
        if not store.images.exists(image_id):
            problems.append(f"tag {ref}: image {image_id} is missing")
    return problems
