"""``strata`` commands that look at containers: ps, top, inspect (containers, then images), logs.
Docker's columns, JSON keys and flags."""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

from store import Store, StoreError

from .. import cgroups
from ..containers import Container, Containers, State
from ..errors import NoSuchContainer, NoSuchVolume, RunnerError
from ..net import settings as net_settings
from ..volumes import Volumes
from . import filters, template
from .errors import UsageError
from .format import ellipsis, human_duration, parse_when, quoted, since, table


def status_text(state: dict[str, Any]) -> str:
    now = datetime.now(UTC)
    if state.get("Running"):
        started = parse_when(state.get("StartedAt"))
        up = "Up " + (human_duration((now - started).total_seconds()) if started else "")
        return up + (" (Paused)" if state.get("Paused") else "")
    if state.get("Status") == State.RESTARTING:
        return f"Restarting ({state.get('ExitCode', 0)}) {since(parse_when(state.get('FinishedAt')), now)}"
    if state.get("Status") == State.EXITED:
        return f"Exited ({state.get('ExitCode', 0)}) {since(parse_when(state.get('FinishedAt')), now)}"
    return "Created"


def _ps_matches(c: Container, state: dict[str, Any], wanted: dict[str, list[str]], store: Store) -> bool:
    status = state.get("Status") or State.CREATED
    status = State.EXITED if status == State.STARTING and not state.get("Running") else status
    if "status" in wanted and status not in wanted["status"]:
        return False
    if "name" in wanted and not any(re.search(n, c.name) for n in wanted["name"]):
        return False
    if "id" in wanted and not any(c.id.startswith(i) for i in wanted["id"]):
        return False
    if "label" in wanted and not filters.labels_match(wanted["label"], c.config["Config"].get("Labels")):
        return False
    if "ancestor" in wanted:
        ids = set()
        for ref in wanted["ancestor"]:
            try:
                ids.add(store.images.resolve(ref))
            except StoreError:
                continue
        if c.config["Image"] not in ids and c.config["ImageRef"] not in wanted["ancestor"]:
            return False
    return True


def ps_command(command: list[str], trunc: bool) -> str:
    """Docker's COMMAND column: the command, shortened to 20 characters *then* quoted (the quote is
    always closed)."""
    text = " ".join(command)
    return json.dumps(ellipsis(text, 20) if trunc else text, ensure_ascii=False)


def cmd_ps(store: Store, args: argparse.Namespace) -> int:
    wanted = filters.parse(args.filter, filters.CONTAINER_FILTERS)
    rows = []
    for c in Containers(store.root.path).all():
        state = c.state()
        if not args.all and not state.get("Running") and "status" not in wanted:  # a status asked for: any
            continue
        if not _ps_matches(c, state, wanted, store):
            continue
        rows.append(
            {
                "ID": c.id if args.no_trunc else c.id[:12],
                "Image": c.config["ImageRef"],
                "Command": ps_command(c.config["Command"], not args.no_trunc),
                "CreatedAt": c.config["Created"],
                "RunningFor": since(parse_when(c.config["Created"])),
                "Status": status_text(state),
                "State": state.get("Status"),
                "Names": c.name,
                "Ports": net_settings.ps_ports(state),
                "Labels": ",".join(f"{k}={v}" for k, v in sorted((c.config["Config"].get("Labels") or {}).items())),
                "Label": _label_of(c.config["Config"].get("Labels") or {}),
                "Mounts": ",".join(m.get("Name") or m.get("Source", "") for m in c.config.get("MountPoints") or []),
                "LocalVolumes": str(sum(1 for m in c.config.get("MountPoints") or [] if m.get("Type") == "volume")),
                "Networks": c.config["HostConfig"].get("NetworkMode", ""),
            }
        )
    if args.quiet:
        for r in rows:
            print(r["ID"])
    elif (lines := template.rows(args.format, rows, PS_COLUMNS)) is not None:
        for line in lines:
            print(line)
    else:
        print(
            table(
                ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"],
                [
                    [r["ID"], r["Image"], r["Command"], r["RunningFor"], r["Status"], r["Ports"], r["Names"]]
                    for r in rows
                ],
            )
        )
    return 0


PS_COLUMNS = {"ID": "CONTAINER ID", "RunningFor": "CREATED", "LocalVolumes": "LOCAL VOLUMES"}  # (the rest: upper case)


def _label_of(labels: dict[str, str]) -> Any:
    """A row's ``Label`` method: ``{{.Label "com.example.x"}}``."""
    return lambda key: labels.get(key, "")


def _proc_row(pid: int, boot: float, ticks: int, users: dict[int, str]) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat.rsplit(")", 1)[1].split()
    ppid, tty_nr = int(fields[1]), int(fields[4])
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    started = boot + int(fields[19]) / ticks
    elapsed = max(time.time() - started, 1e-9)
    uid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))
    major, minor = (tty_nr >> 8) & 0xFFF, (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    tty = f"pts/{minor}" if major == 136 else "?" if tty_nr == 0 else f"tty{minor}"
    stime = time.localtime(started)
    cmd = cmdline.replace(b"\0", b" ").decode(errors="replace").strip() or f"[{comm}]"
    return [
        users.get(uid, str(uid)),
        str(pid),
        str(ppid),
        str(int(cpu * 100 / elapsed)),
        time.strftime("%H:%M" if time.time() - started < 86400 else "%b%d", stime),
        tty,
        time.strftime("%H:%M:%S", time.gmtime(cpu)),
        cmd,
    ]


def cmd_top(store: Store, args: argparse.Namespace) -> int:
    c = Containers(store.root.path).get(args.container)
    state = c.state()
    if not state.get("Running"):
        raise RunnerError(f"container {c.id} is not running")
    cg = cgroups.load(c.config["Cgroup"]["Version"], c.id, pid=state.get("Pid", 0))  # (rootless: PID 1's namespace)
    with open("/proc/stat") as f:
        boot = float(next(line.split()[1] for line in f if line.startswith("btime")))
    ticks = os.sysconf("SC_CLK_TCK")
    users = {p.pw_uid: p.pw_name for p in pwd.getpwall()}
    rows = [r for pid in cg.pids() if (r := _proc_row(pid, boot, ticks, users)) is not None]
    print(table(["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"], rows))
    return 0


def mount_point(m: dict[str, Any]) -> dict[str, Any]:
    """A container's mount point as Docker's inspect shows it (Name and Driver: volumes only)."""
    return {
        k: m.get(k, "")
        for k in ("Type", "Name", "Source", "Destination", "Driver", "Mode", "RW", "Propagation")
        if k not in ("Name", "Driver") or m.get(k)
    }


def inspect_container(c: Container) -> dict[str, Any]:
    state = c.state()
    cfg, hc = c.config["Config"], c.config["HostConfig"]
    return {
        "Id": c.id,
        "Created": c.config["Created"],
        "Path": c.config["Path"],
        "Args": c.config["Args"],
        "State": {
            k: state.get(k, d)
            for k, d in (
                ("Status", State.CREATED),
                ("Running", False),
                ("Paused", False),
                ("Restarting", False),
                ("OOMKilled", False),
                ("Dead", False),
                ("Pid", 0),
                ("ExitCode", 0),
                ("Error", ""),
                ("StartedAt", "0001-01-01T00:00:00Z"),
                ("FinishedAt", "0001-01-01T00:00:00Z"),
            )
        },
        "Image": c.config["Image"],
        "ResolvConfPath": c.path("resolv.conf"),
        "HostnamePath": c.path("hostname"),
        "HostsPath": c.path("hosts"),
        "LogPath": c.path("container.log"),
        "Name": "/" + c.name,
        "RestartCount": state.get("RestartCount", 0),
        "Driver": "strata-unionfs",
        "Platform": "linux",
        "HostConfig": {
            "CpuShares": hc["CpuShares"],
            "Memory": hc["Memory"],
            "MemorySwap": hc["MemorySwap"],
            "NetworkMode": hc["NetworkMode"],
            "PortBindings": hc.get("PortBindings") or {},
            "PublishAllPorts": bool(hc.get("PublishAllPorts")),
            "AutoRemove": hc["AutoRemove"],
            "SecurityOpt": hc.get("SecurityOpt"),
            "Devices": hc.get("Devices", []),
            "DeviceCgroupRules": hc.get("DeviceCgroupRules"),
            "CgroupVersion": str(c.config["Cgroup"]["Version"]),
            "CpuWeight": cgroups.shares_to_weight(hc["CpuShares"]) if hc["CpuShares"] else 0,
            "RestartPolicy": hc.get("RestartPolicy") or {"Name": "no", "MaximumRetryCount": 0},
            **{
                k: hc.get(k, d)
                for k, d in (
                    ("CapAdd", None),
                    ("CapDrop", None),
                    ("Privileged", False),
                    ("Init", None),
                    ("PidsLimit", None),
                    ("NanoCpus", 0),
                    ("CpusetCpus", ""),
                    ("Ulimits", None),
                    ("ExtraHosts", None),
                    ("Dns", []),
                )
            },
            "Binds": hc.get("Binds"),
            "VolumesFrom": hc.get("VolumesFrom"),
            "ReadonlyRootfs": bool(hc.get("ReadonlyRootfs")),
            **{k: hc[k] for k in ("Mounts", "Tmpfs") if hc.get(k)},
        },  # (omitted when empty, as Docker's)
        "GraphDriver": {
            "Name": "strata-unionfs",
            "Data": {
                "LowerDir": ":".join(c.config["LowerDirs"]),
                "UpperDir": c.path("upper"),
                "WorkDir": c.path("work"),
                "MergedDir": c.path("merged"),
            },
        },
        "Mounts": [mount_point(m) for m in c.config.get("MountPoints") or []],
        "Config": {
            "Hostname": cfg["Hostname"],
            "Env": cfg["Env"],
            "Cmd": cfg["Cmd"],
            "Entrypoint": cfg["Entrypoint"],
            "Image": cfg["Image"],
            "WorkingDir": cfg["WorkingDir"],
            "User": cfg["User"],
            "Tty": cfg["Tty"],
            "OpenStdin": cfg["OpenStdin"],
            "Labels": cfg.get("Labels") or {},
            "Volumes": cfg.get("Volumes"),
            **({"ExposedPorts": cfg["ExposedPorts"]} if cfg.get("ExposedPorts") else {}),
            **{k: cfg[k] for k in ("StopSignal", "StopTimeout") if cfg.get(k) is not None},
        },
        "NetworkSettings": net_settings.network_settings(c.config, state),
    }


def cmd_inspect(store: Store, args: argparse.Namespace) -> int:
    """Containers first, then images, then volumes, as ``docker inspect``; ``--type`` looks only at one
    kind."""
    docs = []
    status = 0
    for ref in args.names:
        if args.type in (None, "container"):
            try:
                docs.append(inspect_container(Containers(store.root.path).get(ref)))
                continue
            except NoSuchContainer:
                if args.type == "container":
                    print(f"Error: No such container: {ref}", file=sys.stderr)
                    status = 1
                    continue
        if args.type in (None, "image"):
            try:
                docs.append(store.inspect_image(ref))
                continue
            except StoreError as e:
                if "No such image" not in str(e) or args.type == "image":
                    print(
                        f"Error: {e}" if "No such image" not in str(e) else f"Error: No such image: {ref}",
                        file=sys.stderr,
                    )
                    status = 1
                    continue
        try:  # then volumes, as Docker's
            docs.append(Volumes(store.root.path).get(ref).inspect())
        except NoSuchVolume:
            print(f"Error: No such {'volume' if args.type == 'volume' else 'object'}: {ref}", file=sys.stderr)
            status = 1
    if args.format is None:
        print(json.dumps(docs, indent=4))
        return status
    for doc in docs:
        print(template.render(args.format, doc))
    return status


def _tail(value: str | None) -> int | None:
    """``--tail``: "all" (None) or a count of lines; a negative count is all, as Docker."""
    if value is None or value == "all":
        return None
    if not re.fullmatch(r"[+-]?[0-9]+", value):
        raise UsageError(f"invalid value for --tail: {quoted(value)} (a number of lines, or all)")
    if len(value) >= 20:  # more lines than any log has, or fewer than none: all (and no int() of 5000 digits)
        return None
    count = int(value)
    return None if count < 0 else count


def parse_since(value: str, now: float | None = None) -> float:
    """``--since``: RFC 3339 (``2024-01-02T03:04:05Z``, date only, or no zone: UTC), Unix seconds
    (``1700000000.5``), or a duration back from now (``90s``, ``10m``, ``1h30m``), as Docker's."""
    now = time.time() if now is None else now
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?", value):
        return float(value)
    if re.fullmatch(r"([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+", value):
        scale = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
        return now - sum(
            float(n) * scale[u] for n, _, u in re.findall(r"([0-9]+(\.[0-9]+)?)(ns|us|µs|ms|s|m|h)", value)
        )
    text = value if re.search(r"(Z|[+-][0-9]{2}:[0-9]{2})$", value) else value + "Z"
    if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}Z", text):
        text = text[:-1] + "T00:00:00Z"
    when = parse_when(text)
    if when is None:
        raise UsageError(f"invalid value for --since: {quoted(value)} (a time, Unix seconds or a duration like 10m)")
    return when.timestamp()


def cmd_logs(store: Store, args: argparse.Namespace) -> int:
    tail = _tail(args.tail)
    since_ts = parse_since(args.since) if args.since else None
    c = Containers(store.root.path).get(args.container)
    path = c.path("container.log")
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return 0
    with f:
        lines = f.readlines()
        if tail is not None:
            lines = lines[-tail:] if tail else []
        pending = b""
        while True:
            for raw in lines:
                if not raw.endswith(b"\n"):
                    pending = raw
                    continue
                entry = json.loads(raw)
                if since_ts is not None:
                    when = parse_when(entry.get("time"))
                    if when is not None and when.timestamp() < since_ts:
                        continue
                out = sys.stdout if entry.get("stream") == "stdout" else sys.stderr
                out.write(f"{entry.get('time', '')} {entry['log']}" if args.timestamps else entry["log"])
                out.flush()
            if not args.follow or not c.state().get("Running") and not pending:
                return 0
            time.sleep(0.05)  # following a file: poll it while the container runs
            more = f.readlines()
            if more and pending:
                more[0] = pending + more[0]
                pending = b""
            lines = more
            if not more and not c.state().get("Running"):
                return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("ps", help="list containers", description="List containers (default: running ones).")
    p.add_argument("-a", "--all", action="store_true", help="show every container (default: only running ones)")
    p.add_argument(
        "-f",
        "--filter",
        action="append",
        metavar="KEY=VALUE",
        help="status=created|running|exited|..., name=REGEX, id=PREFIX, label=KEY[=VALUE], ancestor=IMAGE; "
        "repeatable (the same key: either value; different keys: all)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="only container ids")
    p.add_argument("--no-trunc", action="store_true", help="full ids and commands (default: shortened)")
    p.add_argument(
        "--format",
        metavar="FORMAT",
        help="table, json (one JSON object per line), 'table TEMPLATE' or a Go template, as "
        "'{{.ID}} {{.Names}}' (default table)",
    )
    p.set_defaults(func=cmd_ps)

    p = sub.add_parser("top", help="the processes of a container")
    p.add_argument("container", help="a running container: a name or an id (prefix)")
    p.set_defaults(func=cmd_top)

    p = sub.add_parser("inspect", help="low-level information on containers or images, as JSON")
    p.add_argument(
        "-f",
        "--format",
        metavar="TEMPLATE",
        help="a Go template per object instead of JSON, as '{{.State.Status}}' or '{{json .Config}}'",
    )
    p.add_argument(
        "--type",
        choices=["container", "image", "volume"],
        help="look only at one kind (default: containers, then images, then volumes)",
    )
    p.add_argument("names", nargs="+", help="containers (names or ids), images (tags or ids) and volumes")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("logs", help="a container's output")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing while the container runs")
    p.add_argument("-n", "--tail", metavar="N", help="only the last N lines (default: all)")
    p.add_argument("-t", "--timestamps", action="store_true", help="put each line's time (RFC 3339) before it")
    p.add_argument(
        "--since",
        metavar="WHEN",
        help="only lines since a time (2024-01-02T03:04:05Z), Unix seconds, or a duration ago (10m)",
    )
    p.add_argument("container", help="a name or an id (prefix)")
    p.set_defaults(func=cmd_logs)
