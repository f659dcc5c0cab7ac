"""What a start writes for its container before anything runs (at each start, as Docker's daemon
writes its spec for containerd): the init layer with the files bound over /etc, and the OCI bundle
whose ``config.json`` ``runner.init`` runs; and the lower layers of its union."""

from __future__ import annotations

import os
from typing import Any

from store.root import write_json

from . import volumemounts
from .containers import Container
from .net.attach import Endpoint
from .oci import spec as oci_spec


def lowers(c: Container) -> list[str]:
    """The union's lower layers, top first: the init layer, the mountpoints layer, the image's."""
    return [c.path("init"), c.path(volumemounts.LAYER), *c.config["LowerDirs"]]


def write_etc(c: Container, net: Endpoint) -> None:
    """The files bind-mounted into /etc, and the init layer: a lower between the image and the
    upper that holds their mountpoints (and /proc, /sys, /dev), so that mounting them never writes
    into the container's own layer, and diff and commit show only what the command did."""
    init = c.path("init")
    for d in ("etc", "proc", "sys", "dev"):
        os.makedirs(os.path.join(init, d), mode=0o755, exist_ok=True)
    for name in ("hostname", "hosts", "resolv.conf"):
        open(os.path.join(init, "etc", name), "a").close()
    hostname = c.config["Config"]["Hostname"]
    with open(c.path("hostname"), "w") as f:
        f.write(hostname + "\n")
    net.write_etc(hostname, c.path("hosts"), c.path("resolv.conf"))


def write_bundle(c: Container, net: Endpoint | None) -> dict[str, Any]:
    """The container's OCI bundle, ``bundle/config.json``; returns the config."""
    config = oci_spec.for_container(
        c.config,
        c.path("merged"),
        {n: c.path(n) for n in ("hostname", "hosts", "resolv.conf")},
        rootless=(os.getuid(), os.getgid()) if os.geteuid() else None,
        netns=net.netns if net else None,
    )
    oci_spec.check(config)
    os.makedirs(c.path("bundle"), exist_ok=True)
    write_json(c.path("bundle", "config.json"), config, durable=False)
    return config
