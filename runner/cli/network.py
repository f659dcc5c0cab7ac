"""``strata network create|ls|inspect|rm|prune`` and ``strata port``: Docker's flags, columns and words."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
from typing import Any

from store import Store

from ..containers import Containers
from ..net import leases, ports
from ..net import settings as net_settings
from ..net.errors import NetworkError
from ..net.networks import Network, Networks
from . import filters
from .format import parse_when, table

NETWORK_WARNING = "WARNING! This will remove all custom networks not used by at least one container."


def _labels(given: list[str] | None) -> dict[str, str]:
    out = {}
    for item in given or []:
        key, _, value = item.partition("=")
        if not key:
            raise NetworkError(f"invalid label {item!r}: a key is required")
        out[key] = value
    return out


def cmd_create(store: Store, args: argparse.Namespace) -> int:
    if args.driver != "bridge":
        raise NetworkError(f'plugin "{args.driver}" not found (strata has the bridge driver)')
    if os.geteuid() != 0:
        raise NetworkError("user networks need root (rootless containers use bridge, through pasta)")
    from ..net import bridge  # (here: libnftables loads with it)
    from ..net.netlink import Netlink
    from ..net.nft import Nft

    networks = Networks(store.root.path)
    network = networks.create(args.name, args.subnet, args.gateway, _labels(args.label))
    try:
        with leases.locked(), Netlink.here() as nl, Nft() as nft:
            bridge.ensure_bridge(nl, nft, network)
    except BaseException:
        bridge.remove_bridge(network)
        networks.remove(network)
        raise
    print(network.id)
    return 0


def _endpoints(root: str, network: Network) -> dict[str, Any]:
    """The running containers of this store on ``network``, as ``network inspect`` lists them."""
    if not network.bridge:
        return {}
    prefix = ipaddress.IPv4Network(network.subnet).prefixlen
    containers = os.path.join(root, "containers") + os.sep
    return {
        lease.id: {
            "Name": lease.name,
            "EndpointID": lease.veth,
            "MacAddress": leases.mac_for(lease.ip),
            "IPv4Address": f"{lease.ip}/{prefix}",
            "IPv6Address": "",
        }
        for lease in leases.all_leases(network.bridge)
        if lease.container.startswith(containers) and lease.live()
    }


def cmd_ls(store: Store, args: argparse.Namespace) -> int:
    every = sorted(Networks(store.root.path).all(), key=lambda n: n.name)
    if args.quiet:
        for n in every:
            print(n.id if args.no_trunc else n.id[:12])
        return 0
    if args.format == "json":
        for n in every:
            print(
                json.dumps(
                    {
                        "ID": n.id if args.no_trunc else n.id[:12],
                        "Name": n.name,
                        "Driver": n.driver,
                        "Scope": "local",
                        "CreatedAt": n.created,
                    }
                )
            )
        return 0
    print(
        table(
            ["NETWORK ID", "NAME", "DRIVER", "SCOPE"],
            [[n.id if args.no_trunc else n.id[:12], n.name, n.driver, "local"] for n in every],
        )
    )
    return 0


def cmd_inspect(store: Store, args: argparse.Namespace) -> int:
    networks = Networks(store.root.path)
    docs, status = [], 0
    for ref in args.networks:
        try:
            n = networks.get(ref)
        except NetworkError as e:
            print(f"Error: {e}", file=sys.stderr)
            status = 1
            continue
        docs.append(n.inspect(_endpoints(store.root.path, n)))
    print(json.dumps(docs, indent=4))
    return status


def _remove(root: str, network: Network) -> None:
    """``network``'s bridge and record go; ``NetworkError`` if it is built in or a container is on it."""
    from ..net import bridge

    if network.builtin:
        raise NetworkError(f"{network.name} is a pre-defined network and cannot be removed")
    if _endpoints(root, network) or any(lease.live() for lease in leases.all_leases(network.bridge)):
        raise NetworkError(f"error while removing network: network {network.name} id {network.id} has active endpoints")
    bridge.remove_bridge(network)
    Networks(root).remove(network)


def cmd_rm(store: Store, args: argparse.Namespace) -> int:
    networks = Networks(store.root.path)
    status = 0
    for ref in args.networks:
        try:
            _remove(store.root.path, networks.get(ref))
            print(ref)
        except NetworkError as e:
            print(f"Error: {e}", file=sys.stderr)
            status = 1
    return status


def prune_networks(root: str, until: float | None, labels: list[str]) -> list[str]:
    """Remove the user networks no running container is on (created before ``until``, with
    ``labels``), as Docker's ``network prune``; their names."""
    removed = []
    for network in Networks(root).user():
        created = parse_when(network.created)
        if until is not None and (created is None or created.timestamp() >= until):
            continue
        if labels and not filters.labels_match(labels, network.labels):
            continue
        try:
            _remove(root, network)
        except NetworkError:  # a container is on it (or joined it meanwhile): it stays
            continue
        removed.append(network.name)
    return removed


def cmd_prune(store: Store, args: argparse.Namespace) -> int:
    from .prune import confirmed, until_of

    wanted = filters.parse(args.filter, ("until", "label"))
    if not confirmed(NETWORK_WARNING, args.force):
        return 0
    names = prune_networks(store.root.path, until_of(wanted), wanted.get("label", []))
    if names:
        print("Deleted Networks:\n" + "".join(f"{name}\n" for name in names))
    return 0


def cmd_port(store: Store, args: argparse.Namespace) -> int:
    c = Containers(store.root.path).get(args.container)
    published = net_settings.published(c.state())
    if args.port is not None:
        port, proto = ports.split_key(args.port)
        lines = ports.port_lines(published, f"{port}/{proto}")
        if not lines:
            raise NetworkError(f"No public port '{port}/{proto}' published for {c.name}")
    else:
        lines = ports.port_lines(published)
    for line in lines:
        print(line)
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "port",
        help="list a container's published ports",
        description="The host addresses a running container's ports are published on.",
    )
    p.add_argument("container", help="a name or an id (prefix)")
    p.add_argument("port", nargs="?", metavar="PRIVATE_PORT[/PROTO]", help="only this port's (default: all)")
    p.set_defaults(func=cmd_port)

    p = sub.add_parser("network", help="manage networks")
    verbs = p.add_subparsers(dest="network_command", metavar="COMMAND", required=True)
    c = verbs.add_parser("create", help="create a network (a bridge of its own)")
    c.add_argument("-d", "--driver", default="bridge", help="bridge (the only one; default bridge)")
    c.add_argument("--subnet", metavar="CIDR", help="its IPv4 subnet (default: a free /24 from 10.67.0.0)")
    c.add_argument("--gateway", metavar="IP", help="the host's address on it (default: the subnet's first)")
    c.add_argument("--label", action="append", metavar="KEY[=VALUE]", help="a label; repeatable")
    c.add_argument("name", help="the network's name: containers on it reach each other by their names")
    c.set_defaults(func=cmd_create)
    c = verbs.add_parser("ls", aliases=["list"], help="list networks")
    c.add_argument("-q", "--quiet", action="store_true", help="only network ids")
    c.add_argument("--no-trunc", action="store_true", help="full ids (default: 12 digits)")
    c.add_argument(
        "--format",
        choices=["table", "json"],
        default="table",
        help="table, or json: one JSON object per line (default table)",
    )
    c.set_defaults(func=cmd_ls)
    c = verbs.add_parser("inspect", help="networks as JSON, with their running containers")
    c.add_argument("networks", nargs="+", metavar="NETWORK", help="names or ids (prefixes)")
    c.set_defaults(func=cmd_inspect)
    c = verbs.add_parser("rm", aliases=["remove"], help="remove networks no running container is on")
    c.add_argument("networks", nargs="+", metavar="NETWORK", help="names or ids (prefixes)")
    c.set_defaults(func=cmd_rm)
    c = verbs.add_parser("prune", help="remove the user networks no running container is on")
    c.add_argument("-f", "--force", action="store_true", help="do not ask first")
    c.add_argument(
        "--filter",
        action="append",
        metavar="KEY=VALUE",
        help="until=WHEN (created before), label=KEY[=VALUE]; repeatable",
    )
    c.set_defaults(func=cmd_prune)
