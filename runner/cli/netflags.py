"""``run``'s network flags: ``--network``, ``-p/--publish``, ``-P/--publish-all``, turned into the
container record's fields (Docker's: ``HostConfig.NetworkMode``, ``PortBindings``,
``PublishAllPorts``, ``Config.ExposedPorts``), checked as Docker's CLI and daemon check them."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..containers import Containers
from ..net import ports
from ..net.errors import NetworkError
from ..net.networks import Networks

MODES = "bridge (default), none, host, container:NAME or a network's name"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--network",
        "--net",
        default="bridge",
        metavar="NETWORK",
        help=f"{MODES}; as an ordinary user bridge is pasta's (default bridge)",
    )
    p.add_argument(
        "-p",
        "--publish",
        action="append",
        metavar="[IP:][HOST:]CTR[/PROTO]",
        help="publish a container port on the host: HOST:CTR, IP:HOST:CTR, CTR (any free host port), "
        "ranges as 8000-8001:80-81, /udp; repeatable",
    )
    p.add_argument(
        "-P",
        "--publish-all",
        action="store_true",
        dest="publish_all",
        help="publish every port the image exposes (EXPOSE) on free host ports",
    )


def plan(root: str, args: argparse.Namespace, image_settings: dict[str, Any]) -> dict[str, Any]:
    """The record's network fields: ``{"HostConfig": {...}, "ExposedPorts": {...}, "NetworkID": ...}``.
    ``NetworkError`` (or ``NoSuchContainer``) for a bad value, before anything is created."""
    bindings = ports.bindings(args.publish or [])  # the flags first, as Docker's CLI
    mode = args.network
    network_id = ""
    if mode.startswith("container:"):
        if bindings or args.publish_all:
            raise NetworkError("conflicting options: port publishing and the container type network mode")
        other = Containers(root).get(mode.split(":", 1)[1])
        if os.geteuid() != 0:
            raise NetworkError("--network container:NAME is not supported for rootless containers yet")
        mode = f"container:{other.id}"
    elif mode in ("host", "none"):
        if bindings or args.publish_all:
            print(f"WARNING: Published ports are discarded when using {mode} network mode", file=sys.stderr)
            bindings = {}
    elif mode == "pasta" and os.geteuid() == 0:
        raise NetworkError("--network pasta is for rootless containers (root's containers use bridge)")
    elif mode != "pasta":
        network = Networks(root).get(mode)  # NoSuchNetwork: "network X not found", as Docker
        if os.geteuid() != 0 and not network.builtin:
            raise NetworkError(
                f"network {network.name}: user networks need root (rootless containers use bridge, through pasta)"
            )
        mode, network_id = network.name, network.id
    exposed: dict[str, dict[str, Any]] = {
        f"{port}/{proto}": {} for port, proto in (ports.split_key(k) for k in image_settings.get("ExposedPorts") or {})
    }
    for key in bindings:
        exposed.setdefault(key, {})
    exposed = dict(sorted(exposed.items(), key=lambda kv: ports.split_key(kv[0])))
    publish_all = bool(args.publish_all) and mode not in ("host", "none")
    return {
        "HostConfig": {"NetworkMode": mode, "PortBindings": bindings, "PublishAllPorts": publish_all},
        "ExposedPorts": exposed or None,
        "NetworkID": network_id,
    }
