"""What takes space, and taking it back, as Docker's verbs: ``container prune`` (stopped
containers), ``image prune [-a]`` (dangling images, or every image no container uses), ``system
prune [-a] [--volumes]`` (both, the user networks no running container is on, and unused volumes), ``system df`` (images, containers, volumes:
how many, how many in use, their size and what a prune would free). Each prune asks first, as
Docker's, unless ``-f``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from store import Store, StoreError

from .. import lifecycle
from ..containers import Container, Containers
from ..errors import RunnerError
from ..mounts import ImageMounts
from ..volumes import Volumes, disk_usage
from . import filters
from .format import human_size, parse_when, table
from .listing import parse_since
from .network import prune_networks

CONTAINER_WARNING = "WARNING! This will remove all stopped containers."
IMAGE_WARNING = {
    False: "WARNING! This will remove all dangling images.",
    True: "WARNING! This will remove all images without at least one container associated to them.",
}
STOPPED = ("created", "exited")


def confirmed(warning: str, force: bool) -> bool:
    if force:
        return True
    sys.stdout.write(f"{warning}\nAre you sure you want to continue? [y/N] ")
    sys.stdout.flush()
    return sys.stdin.readline().strip().lower() == "y"


def until_of(wanted: dict[str, list[str]]) -> float | None:
    """``until=WHEN``: only what was created before then (the earliest if given twice)."""
    bounds = [parse_since(v) for v in wanted.get("until", [])]
    return min(bounds) if bounds else None


def _created_before(created: object, until: float | None) -> bool:
    when = parse_when(created)
    return until is None or (when is not None and when.timestamp() < until)


# -- containers -----------------------------------------------------------------------------------
def container_size(c: Container) -> int:
    """The bytes of its writable layer (Docker's SizeRw)."""
    return disk_usage(c.path("upper"))


def prune_containers(root: str, wanted: dict[str, list[str]]) -> tuple[list[str], int]:
    """Remove the containers that do not run (created, exited) and match ``wanted``; (ids, bytes)."""
    until = until_of(wanted)
    removed, freed = [], 0
    for c in Containers(root).all():
        if c.state().get("Status") not in STOPPED or not _created_before(c.config.get("Created"), until):
            continue
        if wanted.get("label") and not filters.labels_match(wanted["label"], c.config["Config"].get("Labels")):
            continue
        size = container_size(c)
        try:
            lifecycle.remove(root, c, force=False)
        except RunnerError:  # started meanwhile, or mounted for inspection: it stays
            continue
        removed.append(c.id)
        freed += size
    return removed, freed


def cmd_container_prune(store: Store, args: argparse.Namespace) -> int:
    wanted = filters.parse(args.filter, ("until", "label"))
    if not confirmed(CONTAINER_WARNING, args.force):
        return 0
    removed, freed = prune_containers(store.root.path, wanted)
    if removed:
        print("Deleted Containers:\n" + "".join(f"{cid}\n" for cid in removed))
    print(f"Total reclaimed space: {human_size(freed)}")
    return 0


# -- images ---------------------------------------------------------------------------------------
def _used_images(store: Store) -> set[str]:
    """Images a container or an inspection mount holds."""
    used = {c.config.get("Image") for c in Containers(store.root.path).all()}
    used |= {m.image for m in ImageMounts(store.root.path).all()}
    return {u for u in used if u}


def prune_images(store: Store, every: bool, wanted: dict[str, list[str]]) -> tuple[list[str], int]:
    """Remove dangling images (``every``: all images) that no container uses and that match
    ``wanted``, children before parents; (Docker's ``untagged:``/``deleted:`` lines, bytes freed)."""
    until = until_of(wanted)
    lines: list[str] = []
    freed = 0
    tried: set[str] = set()
    while True:
        used = _used_images(store)
        tagged = store.images.tags_by_image()
        sizes = {c: store.layers.info(c).size for c in store.layers.all()}
        candidates = []
        for image_id in store.images.ids():
            if image_id in used or image_id in tried or store.images.children(image_id):
                continue
            if not every and image_id in tagged:
                continue
            config = store.images.config(image_id)
            if not _created_before(config.get("created"), until):
                continue
            if wanted.get("label") and not filters.labels_match(
                wanted["label"], (config.get("config") or {}).get("Labels")
            ):
                continue
            candidates.append(image_id)
        if not candidates:
            return lines, freed
        for image_id in candidates:
            tried.add(image_id)
            try:
                out = store.rmi(image_id, force=True, holders=lambda i: [*Containers(store.root.path).using_image(i)])
            except StoreError:  # used or changed meanwhile: it stays
                continue
            for line in out:
                kind, _, what = line.partition(": ")
                lines.append(f"{kind.lower()}: {what}")
                if kind == "Deleted" and what in sizes:
                    freed += sizes[what]


def cmd_image_prune(store: Store, args: argparse.Namespace) -> int:
    wanted = filters.parse(args.filter, ("until", "label"))
    if not confirmed(IMAGE_WARNING[bool(args.all)], args.force):
        return 0
    lines, freed = prune_images(store, bool(args.all), wanted)
    if lines:
        print("Deleted Images:\n" + "".join(f"{line}\n" for line in lines))
    print(f"Total reclaimed space: {human_size(freed)}")
    return 0


# -- system ---------------------------------------------------------------------------------------
def cmd_system_prune(store: Store, args: argparse.Namespace) -> int:
    wanted = filters.parse(args.filter, ("until", "label"))
    items = [
        "all stopped containers",
        "all networks not used by at least one container",
        *(["all anonymous volumes not used by at least one container"] if args.volumes else []),
        "all dangling images" if not args.all else "all images without at least one container associated to them",
    ]
    warning = "WARNING! This will remove:\n" + "".join(f"  - {item}\n" for item in items)
    if not confirmed(warning, args.force):
        return 0
    removed, freed = prune_containers(store.root.path, wanted)
    if removed:
        print("Deleted Containers:\n" + "".join(f"{cid}\n" for cid in removed))
    networks = prune_networks(store.root.path, until_of(wanted), wanted.get("label", []))
    if networks:
        print("Deleted Networks:\n" + "".join(f"{name}\n" for name in networks))
    if args.volumes:
        names, size = Volumes(store.root.path).prune(False, wanted.get("label"))
        freed += size
        if names:
            print("Deleted Volumes:\n" + "".join(f"{name}\n" for name in names))
    lines, size = prune_images(store, bool(args.all), wanted)
    freed += size
    if lines:
        print("Deleted Images:\n" + "".join(f"{line}\n" for line in lines))
    print(f"Total reclaimed space: {human_size(freed)}")
    return 0


def _share(reclaimable: int, total: int) -> str:
    """Docker's RECLAIMABLE: the size and its share of the total, as a whole percent."""
    return f"{human_size(reclaimable)} ({int(reclaimable * 100 / total) if total else 0}%)"


def disk_usage_rows(store: Store) -> list[dict[str, Any]]:
    """``system df``'s rows: Images, Containers, Local Volumes, Build Cache."""
    root = store.root.path
    containers = Containers(root).all()
    used = _used_images(store)
    images = store.images.ids()
    layers_of = {i: set(store.images.chain(i)) for i in images}
    sizes = {c: store.layers.info(c).size for c in store.layers.all()}
    all_layers = set().union(*layers_of.values()) if layers_of else set()
    in_use = set().union(*(layers_of[i] for i in images if i in used)) if used else set()
    image_total = sum(sizes.get(c, 0) for c in all_layers)
    image_free = sum(sizes.get(c, 0) for c in all_layers - in_use)
    sized = [(c, container_size(c), c.state()) for c in containers]
    container_total = sum(size for _, size, _ in sized)
    container_free = sum(size for _, size, state in sized if not state.get("Running"))
    volumes = Volumes(root).all()
    mounted = {
        m.get("Name") for c in containers for m in c.config.get("MountPoints") or [] if m.get("Type") == "volume"
    }
    volume_sizes = {v.name: disk_usage(v.data) for v in volumes}
    volume_total = sum(volume_sizes.values())
    volume_free = sum(size for name, size in volume_sizes.items() if name not in mounted)
    return [
        {
            "Type": "Images",
            "TotalCount": len(images),
            "Active": len([i for i in images if i in used]),
            "Size": human_size(image_total),
            "Reclaimable": _share(image_free, image_total),
        },
        {
            "Type": "Containers",
            "TotalCount": len(containers),
            "Active": len([1 for _, _, state in sized if state.get("Running")]),
            "Size": human_size(container_total),
            "Reclaimable": _share(container_free, container_total),
        },
        {
            "Type": "Local Volumes",
            "TotalCount": len(volumes),
            "Active": len([v for v in volumes if v.name in mounted]),
            "Size": human_size(volume_total),
            "Reclaimable": _share(volume_free, volume_total),
        },
        {"Type": "Build Cache", "TotalCount": 0, "Active": 0, "Size": "0B", "Reclaimable": "0B"},
    ]


def cmd_system_df(store: Store, args: argparse.Namespace) -> int:
    from . import template

    rows = disk_usage_rows(store)
    if args.format is not None:
        for row in rows:
            print(template.render(args.format, row) if args.format != "json" else template.render("{{json .}}", row))
        return 0
    print(
        table(
            ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"],
            [[r["Type"], str(r["TotalCount"]), str(r["Active"]), r["Size"], r["Reclaimable"]] for r in rows],
        )
    )
    return 0


def add_prune_parser(group: Any, what: str) -> None:
    """``container prune`` or ``image prune`` under their group's subparsers."""
    p = group.add_parser("prune", help=f"remove {'stopped containers' if what == 'container' else 'unused images'}")
    p.add_argument("-f", "--force", action="store_true", help="do not ask first")
    p.add_argument(
        "--filter",
        action="append",
        metavar="KEY=VALUE",
        help="until=WHEN (created before), label=KEY[=VALUE]; repeatable",
    )
    if what == "image":
        p.add_argument("-a", "--all", action="store_true", help="every image no container uses, not only dangling ones")
    p.set_defaults(func=cmd_container_prune if what == "container" else cmd_image_prune)


def add_system_parsers(system: Any) -> None:
    """``system prune`` and ``system df`` under ``system``'s subparsers (``images`` makes the group)."""
    p = system.add_parser(
        "prune", help="remove stopped containers, unused networks and dangling images (and unused volumes)"
    )
    p.add_argument("-a", "--all", action="store_true", help="every image no container uses, not only dangling ones")
    p.add_argument("-f", "--force", action="store_true", help="do not ask first")
    p.add_argument("--volumes", action="store_true", help="anonymous volumes no container uses too")
    p.add_argument("--filter", action="append", metavar="KEY=VALUE", help="until=WHEN, label=KEY[=VALUE]")
    p.set_defaults(func=cmd_system_prune)
    p = system.add_parser("df", help="the space images, containers and volumes take")
    p.add_argument("--format", metavar="TEMPLATE", help="json or a Go template per row")
    p.set_defaults(func=cmd_system_df)


def add_parsers(sub: Any) -> None:
    """The ``container`` and ``image`` groups (their ``prune``)."""
    for what in ("container", "image"):
        p = sub.add_parser(what, help=f"manage {what}s (prune)")
        group = p.add_subparsers(dest=f"{what}_command", metavar="COMMAND", required=True)
        add_prune_parser(group, what)
