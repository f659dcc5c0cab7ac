"""``strata events``: containers' lifecycle events (``runner.events``) as Docker's CLI prints them,
followed as they happen; ``--since`` replays the log from a time, ``--until`` stops at one, ``-f``
keeps some (``container=``, ``event=``, ``image=``, ``label=``, ``type=container``), ``--format``
takes Go templates and ``json`` (one JSON object a line)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from typing import Any

from store import Store

from .. import events
from ..containers import Containers
from ..errors import NoSuchContainer
from . import filters, template
from .errors import UsageError
from .listing import parse_since

EVENT_FILTERS = ("container", "event", "image", "label", "type")


def when(event: dict[str, Any]) -> str:
    """Docker's RFC3339NanoFixed, in local time (``Z`` for UTC)."""
    nano = int(event.get("timeNano") or int(event.get("time", 0)) * 10**9)
    local = datetime.fromtimestamp(nano // 10**9).astimezone()
    offset = local.strftime("%z")
    zone = "Z" if offset in ("+0000", "") else f"{offset[:3]}:{offset[3:]}"
    return local.strftime("%Y-%m-%dT%H:%M:%S") + f".{nano % 10**9:09d}{zone}"


def text(event: dict[str, Any]) -> str:
    """``2024-01-02T03:04:05.000000000Z container die ID (exitCode=0, image=bb, name=x)``."""
    attrs = event.get("Actor", {}).get("Attributes") or {}
    shown = ", ".join(f"{k}={v}" for k, v in sorted(attrs.items()))
    return f"{when(event)} {event.get('Type')} {event.get('Action')} {event.get('id')}" + (
        f" ({shown})" if shown else ""
    )


def _matches(event: dict[str, Any], wanted: dict[str, list[str]], ids: dict[str, str]) -> bool:
    attrs = event.get("Actor", {}).get("Attributes") or {}
    if "type" in wanted and event.get("Type") not in wanted["type"]:
        return False
    if "event" in wanted and event.get("Action") not in wanted["event"]:
        return False
    if "container" in wanted:
        cid = str(event.get("id", ""))
        if not any(
            cid == ids.get(ref) or cid.startswith(ref) or attrs.get("name") == ref for ref in wanted["container"]
        ):
            return False
    if "image" in wanted and attrs.get("image") not in wanted["image"] and event.get("from") not in wanted["image"]:
        return False
    if "label" in wanted and not filters.labels_match(wanted["label"], attrs):
        return False
    return True


def cmd_events(store: Store, args: argparse.Namespace) -> int:
    wanted = filters.parse(args.filter, EVENT_FILTERS)
    now = time.time()
    since = parse_since(args.since, now) if args.since else None
    until = parse_since(args.until, now) if args.until else None
    if since is not None and until is not None and until < since:
        raise UsageError("--since time cannot be after --until time")
    ids = {}
    for ref in wanted.get("container", []):  # a name given now: the container it names now
        try:
            ids[ref] = Containers(store.root.path).get(ref).id
        except NoSuchContainer:
            pass

    def show(event: dict[str, Any]) -> None:
        if not _matches(event, wanted, ids):
            return
        if args.format is None:
            print(text(event))
        elif args.format == "json":
            print(json.dumps(event))
        else:
            print(template.render(args.format, event))
        sys.stdout.flush()

    if since is not None:
        for event in events.past(store.root.path):
            stamp = int(event.get("timeNano", 0)) / 1e9
            if stamp >= since and (until is None or stamp <= min(until, now)):
                show(event)
    if until is not None and until <= now:
        return 0
    for followed in events.follow(store.root.path, stop=until):
        if followed is not None:
            show(followed)
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "events",
        help="containers' lifecycle events, as they happen",
        description="Print containers' events (create, start, die, kill, stop, pause, unpause, "
        "rename, destroy, oom) as they happen, until --until or an interrupt.",
    )
    p.add_argument("--since", metavar="WHEN", help="first the events since then (a time, Unix seconds or 10m)")
    p.add_argument("--until", metavar="WHEN", help="stop at that time")
    p.add_argument(
        "-f",
        "--filter",
        action="append",
        metavar="KEY=VALUE",
        help="container=NAME|ID, event=ACTION, image=IMAGE, label=KEY[=VALUE], type=container; repeatable",
    )
    p.add_argument("--format", metavar="TEMPLATE", help="json (one JSON object a line) or a Go template")
    p.set_defaults(func=cmd_events)
