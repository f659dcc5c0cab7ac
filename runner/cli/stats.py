"""``strata stats``: live CPU %, memory use and limit, network and block I/O and processes of
containers (``runner.stats``), as Docker's table, redrawn every second until interrupted, or once
with ``--no-stream``. Docker's units: binary for memory (``1.5MiB``), decimal for I/O (``1.2kB``)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from store import Store

from .. import stats
from ..containers import Container, Containers
from . import template
from .format import human_size, table

INTERVAL = 1.0  # seconds between two samples, as Docker's collector
HEADER = ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O", "BLOCK I/O", "PIDS"]
COLUMNS = {
    "ID": "CONTAINER ID",
    "CPUPerc": "CPU %",
    "MemUsage": "MEM USAGE / LIMIT",
    "MemPerc": "MEM %",
    "NetIO": "NET I/O",
    "BlockIO": "BLOCK I/O",
    "PIDs": "PIDS",
    "Container": "CONTAINER",
}
_BINARY = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]


def bytes_size(size: float) -> str:
    """go-units BytesSize: binary units, 4 significant digits."""
    i = 0
    while size >= 1024 and i < len(_BINARY) - 1:
        size /= 1024.0
        i += 1
    return f"{size:.4g}{_BINARY[i]}"


def row(c: Container, ref: str, before: stats.Sample, after: stats.Sample) -> dict[str, Any]:
    limit = after.limit or 1
    return {
        "Container": ref,
        "Name": c.name,
        "ID": c.id[:12],
        "CPUPerc": f"{stats.cpu_percent(before, after):.2f}%",
        "MemUsage": f"{bytes_size(after.memory)} / {bytes_size(after.limit)}",
        "MemPerc": f"{after.memory * 100.0 / limit:.2f}%",
        "NetIO": f"{human_size(after.rx)} / {human_size(after.tx)}",
        "BlockIO": f"{human_size(after.read)} / {human_size(after.written)}",
        "PIDs": str(after.pids),
    }


def _containers(store: Store, args: argparse.Namespace) -> list[tuple[str, Container]]:
    every = Containers(store.root.path)
    if args.containers:
        return [(ref, every.get(ref)) for ref in args.containers]
    return [(c.id[:12], c) for c in every.all() if args.all or c.state().get("Running")]


def _show(rows: list[dict[str, Any]], fmt: str | None, clear: bool) -> None:
    lines = template.rows(fmt, rows, COLUMNS)
    if lines is None:
        lines = table(
            HEADER,
            [
                [r["ID"], r["Name"], r["CPUPerc"], r["MemUsage"], r["MemPerc"], r["NetIO"], r["BlockIO"], r["PIDs"]]
                for r in rows
            ],
        ).split("\n")
    out = ("\033[2J\033[H" if clear else "") + "\n".join(lines) + "\n"
    sys.stdout.write(out)
    sys.stdout.flush()


def cmd_stats(store: Store, args: argparse.Namespace) -> int:
    clear = sys.stdout.isatty() and not args.no_stream
    watched = _containers(store, args)
    before = {c.id: stats.sample(c) for _, c in watched}
    while True:
        time.sleep(INTERVAL if not args.no_stream else INTERVAL / 2)
        if not args.containers:  # the running ones, as they come and go
            watched = _containers(store, args)
        rows = []
        for ref, c in watched:
            now = stats.sample(c)
            rows.append(row(c, ref, before.get(c.id, now), now))
            before[c.id] = now
        _show(rows, args.format, clear)
        if args.no_stream:
            return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "stats",
        help="live resource use of containers",
        description="CPU %, memory, network and block I/O and processes of running containers "
        "(or those named), every second until interrupted.",
    )
    p.add_argument("-a", "--all", action="store_true", help="every container (default: running ones)")
    p.add_argument("--no-stream", action="store_true", dest="no_stream", help="one sample, then exit")
    p.add_argument(
        "--format",
        metavar="FORMAT",
        help="table, json, 'table TEMPLATE' or a Go template ({{.Name}} {{.CPUPerc}} {{.MemUsage}}...)",
    )
    p.add_argument("containers", nargs="*", help="names or ids (prefixes); default: every running container")
    p.set_defaults(func=cmd_stats)
