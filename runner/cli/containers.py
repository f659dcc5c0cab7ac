"""``strata`` container commands: run, ps, top, inspect, logs, stop, kill, start, wait, rm, exec.
Docker's flags, columns and exit codes (125: strata failed, 126: cannot run, 127: not found)."""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import secrets
import signal
import sys
import time
from datetime import UTC, datetime
from typing import Any

from store import Store, StoreError

from .. import cgroups, devices, init, layerdiff, seccomp
from ..containers import Container, Containers, check_name
from ..errors import ContainerConflict, NoSuchContainer, RunnerError
from ..mounts import ImageMounts
from . import filters, template, terminal
from .errors import ParseError, UsageError
from .format import ellipsis, human_duration, parse_when, quoted, since, table
from .parsing import int64
from .units import effective_cpu_shares, memory_swap, parse_memory

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NETWORKS = ("none", "host")
HOST_NAME_MAX = 64  # bytes: sethostname(2) refuses more
NOT_A_TTY = "the input device is not a TTY"  # Docker's words (exit 1) for -it with stdin from a pipe or file


def _containers(store: Store) -> Containers:
    return Containers(store.root.path)


# -- run ------------------------------------------------------------------------------------------
def _check_env(entries: list[str]) -> None:
    """Docker's ValidateEnv: a name before any ``=``; and no NUL, which no environment can hold."""
    for entry in entries:
        if not entry.split("=", 1)[0] or "\0" in entry:
            shown = entry.replace("\0", "\\0")
            raise UsageError(f"invalid environment variable: {shown}")


def _check_hostname(hostname: str) -> None:
    if len(hostname) > HOST_NAME_MAX:
        raise UsageError(f"invalid hostname {quoted(hostname)}: longer than {HOST_NAME_MAX} characters")
    if len(hostname.encode()) > HOST_NAME_MAX:
        raise UsageError(f"invalid hostname {quoted(hostname)}: longer than {HOST_NAME_MAX} bytes")
    if any(c.isspace() or not c.isprintable() for c in hostname):  # it is written into /etc/hosts
        raise UsageError(f"invalid hostname {quoted(hostname)}: it may not hold spaces or control characters")


def _labels(given: list[str] | None) -> dict[str, str]:
    """``-l KEY[=VALUE]``: a label (no value: empty), after the image's, as Docker's."""
    out = {}
    for item in given or []:
        key, _, value = item.partition("=")
        if not key:
            raise UsageError(f"invalid label {quoted(item)}: a key is required")
        out[key] = value
    return out


def _security_options(options: list[str]) -> str | dict[str, Any] | None:
    """``--security-opt``: ``seccomp=unconfined|FILE`` (the file is read now, as Docker's CLI does, so
    the container keeps the profile it was created with) and ``no-new-privileges`` (always in force).
    Returns the container's ``Seccomp`` setting: "default", a profile, or None (unconfined)."""
    setting: str | dict[str, Any] | None = "default"
    for option in options:
        key, sep, value = option.partition("=" if "=" in option else ":")
        if key == "seccomp" and sep and value:
            setting = None if value == "unconfined" else seccomp.load_profile(value)
        elif key == "no-new-privileges" and value in ("", "true"):
            continue
        else:
            raise RunnerError(f"Invalid --security-opt: {quoted(option)} (strata knows seccomp=unconfined|FILE "
                              "and no-new-privileges)")
    return setting


def _container_config(store: Store, args: argparse.Namespace, cid: str) -> dict[str, Any]:
    """Everything ``run`` decides before anything is created; bad input raises here, flags first
    (as Docker's CLI checks them before it asks the daemon), then the image."""
    memory = parse_memory(args.memory) if args.memory else 0
    cpu_shares = effective_cpu_shares(args.cpu_shares or 0)
    if args.network not in NETWORKS:
        raise RunnerError(f"network {args.network} not found")
    _check_env(args.env or [])
    if args.hostname:
        _check_hostname(args.hostname)
    seccomp_setting = _security_options(args.security_opt or [])
    host_devices = [devices.host_device(spec) for spec in args.device or []]
    device_rules = [rule for _, rule in host_devices] + [devices.parse_rule(t) for t in args.device_cgroup_rule or []]
    image_id = store.images.resolve(args.image)
    image = store.images.config(image_id)
    settings = image.get("config") or {}
    entrypoint = settings.get("Entrypoint") or []
    cmd = args.command or settings.get("Cmd") or []
    command = list(entrypoint) + list(cmd)
    if not command:
        raise RunnerError("no command specified")
    env = list(settings.get("Env") or [])
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, DEFAULT_PATH)
    hostname = args.hostname or cid[:12]
    extra = [f"HOSTNAME={hostname}"] + (["TERM=xterm"] if args.tty else []) + list(args.env or [])
    for item in extra:
        key = item.split("=", 1)[0]
        if "=" not in item:  # -e NAME: take the value from this environment, as Docker does
            if key not in os.environ:
                continue
            item = f"{key}={os.environ[key]}"
        env = [e for e in env if e.split("=", 1)[0] != key] + [item]
    chain = store.images.chain(image_id)
    lowers = [store.layers.diff_dir(c) for c in reversed(chain)]
    cg = cgroups.for_host(cid)
    if not cg.version and (memory or cpu_shares):  # rootless without a delegated cgroup: as rootless podman
        print("WARNING: no cgroup is delegated to you: --memory and --cpu-shares are not enforced", file=sys.stderr)
        memory = cpu_shares = 0
    return {
        "Image": image_id, "ImageRef": args.image, "Command": command,
        "Path": command[0], "Args": command[1:],
        "Config": {"Hostname": hostname, "Env": env, "Cmd": list(cmd), "Entrypoint": list(entrypoint) or None,
                   "WorkingDir": args.workdir or settings.get("WorkingDir") or "", "User": args.user or
                   settings.get("User") or "", "Tty": bool(args.tty), "OpenStdin": bool(args.interactive),
                   "Image": args.image, "Labels": {**(settings.get("Labels") or {}), **_labels(args.label)}},
        "HostConfig": {"CpuShares": cpu_shares, "Memory": memory, "MemorySwap": memory_swap(memory),
                       "NetworkMode": args.network, "AutoRemove": bool(args.rm),
                       "SecurityOpt": list(args.security_opt or []) or None,
                       "Devices": [{"PathOnHost": spec.split(":")[0], "PathInContainer": node["path"],
                                    "CgroupPermissions": rule["access"]}
                                   for spec, (node, rule) in zip(args.device or [], host_devices, strict=True)],
                       "DeviceCgroupRules": list(args.device_cgroup_rule or []) or None},
        "Seccomp": seccomp_setting,
        "LinuxDevices": [node for node, _ in host_devices],  # the runtime-spec's linux.devices
        "DeviceRules": device_rules,  # and its resources.devices, after the defaults
        "Cgroup": {"Version": cg.version, "Dirs": cg.dirs()},
        "LowerDirs": lowers,
    }


def _start_detached(store: Store, container: Container) -> tuple[int, str]:
    """Fork a detached supervisor (its own session, stdio on /dev/null); return (0, pid) once PID 1
    runs, or (code, error). A fork of this process, not a fresh interpreter: the imports are done."""
    from unionfs.mount import fork_detached  # with trio and pyfuse3: only commands that start need them

    from .. import supervisor

    def supervise(ready: int) -> int:
        os.chdir("/")
        return supervisor.run_detached(store.root.path, container.id, ready)

    sys.stdout.flush()
    sys.stderr.flush()
    _pid, r = fork_detached(supervise, failure=125)
    with os.fdopen(r, "rb") as pipe:
        message = pipe.read().decode(errors="replace")
    if message.startswith("ok "):
        return 0, message.split()[1]
    if message.startswith("error "):
        _, code, error = message.split(" ", 2)
        return int(code), error
    return 125, "the supervisor died before the container started"


def cmd_run(store: Store, args: argparse.Namespace) -> int:
    from ..supervisor import Attach, run_attached

    if args.tty and args.interactive and not os.isatty(0):  # keys to a pty that will never see EOF: refused
        print(NOT_A_TTY, file=sys.stderr)
        return 1
    if args.name is not None:
        check_name(args.name)  # before the image is looked up, as Docker's CLI checks flags first
    cid = secrets.token_hex(32)
    with store.root.pinned():  # rmi cannot take the image's layers between the look-up and the record
        config = _container_config(store, args, cid)
        container = _containers(store).create(config, args.name, cid)
    if args.detach:
        code, detail = _start_detached(store, container)
        if code:
            print(f"Error: {detail}", file=sys.stderr)
            return code
        print(container.id)
        return 0
    attach = Attach(stdin=sys.stdin.fileno() if args.interactive else None, stdout=sys.stdout.fileno(),
                    stderr=sys.stderr.fileno())
    sys.stdout.flush()
    code, error = run_attached(store.root.path, container, attach)
    if error:
        print(f"Error: {error}", file=sys.stderr)
    return code


# -- listing and looking ------------------------------------------------------------------------------
def status_text(state: dict[str, Any]) -> str:
    now = datetime.now(UTC)
    if state.get("Running"):
        started = parse_when(state.get("StartedAt"))
        return "Up " + (human_duration((now - started).total_seconds()) if started else "")
    if state.get("Status") == "exited":
        return f"Exited ({state.get('ExitCode', 0)}) {since(parse_when(state.get('FinishedAt')), now)}"
    return "Created"


def _ps_matches(c: Container, state: dict[str, Any], wanted: dict[str, list[str]], store: Store) -> bool:
    status = state.get("Status") or "created"
    status = "exited" if status == "starting" and not state.get("Running") else status
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
    for c in _containers(store).all():
        state = c.state()
        if not args.all and not state.get("Running") and "status" not in wanted:  # a status asked for: any
            continue
        if not _ps_matches(c, state, wanted, store):
            continue
        rows.append({
            "ID": c.id if args.no_trunc else c.id[:12], "Image": c.config["ImageRef"],
            "Command": ps_command(c.config["Command"], not args.no_trunc),
            "CreatedAt": c.config["Created"], "RunningFor": since(parse_when(c.config["Created"])),
            "Status": status_text(state), "State": state.get("Status"), "Names": c.name,
            "Ports": "",  # published ports come with -p (issue 19): none yet
            "Labels": ",".join(f"{k}={v}" for k, v in sorted((c.config["Config"].get("Labels") or {}).items())),
        })
    if args.quiet:
        for r in rows:
            print(r["ID"])
    elif args.format == "json":
        for r in rows:
            print(json.dumps(r))
    else:
        print(table(["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"],
                    [[r["ID"], r["Image"], r["Command"], r["RunningFor"], r["Status"], r["Ports"], r["Names"]]
                     for r in rows]))
    return 0


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
    return [users.get(uid, str(uid)), str(pid), str(ppid), str(int(cpu * 100 / elapsed)),
            time.strftime("%H:%M" if time.time() - started < 86400 else "%b%d", stime), tty,
            time.strftime("%H:%M:%S", time.gmtime(cpu)), cmd]


def cmd_top(store: Store, args: argparse.Namespace) -> int:
    c = _containers(store).get(args.container)
    state = c.state()
    if not state.get("Running"):
        raise RunnerError(f"container {c.id} is not running")
    cg = cgroups.load(c.config["Cgroup"]["Version"], c.id)
    with open("/proc/stat") as f:
        boot = float(next(line.split()[1] for line in f if line.startswith("btime")))
    ticks = os.sysconf("SC_CLK_TCK")
    users = {p.pw_uid: p.pw_name for p in pwd.getpwall()}
    rows = [r for pid in cg.pids() if (r := _proc_row(pid, boot, ticks, users)) is not None]
    print(table(["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"], rows))
    return 0


def _network_settings(mode: str, pid: int | None) -> dict[str, Any]:
    """Docker's NetworkSettings for a container on ``none`` or ``host``: no address, no ports, the
    namespace's path while it runs (SandboxKey)."""
    endpoint = {"IPAMConfig": None, "Links": None, "Aliases": None, "MacAddress": "", "DriverOpts": None,
                "NetworkID": mode, "EndpointID": "", "Gateway": "", "IPAddress": "", "IPPrefixLen": 0,
                "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "DNSNames": None}
    return {"Bridge": "", "SandboxID": "", "SandboxKey": f"/proc/{pid}/ns/net" if pid else "",
            "Ports": {}, "HairpinMode": False, "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0,
            "EndpointID": "", "Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "IPAddress": "",
            "IPPrefixLen": 0, "IPv6Gateway": "", "MacAddress": "", "Networks": {mode: endpoint}}


def inspect_container(c: Container) -> dict[str, Any]:
    state = c.state()
    cfg, hc = c.config["Config"], c.config["HostConfig"]
    running = bool(state.get("Running"))
    return {
        "Id": c.id, "Created": c.config["Created"], "Path": c.config["Path"], "Args": c.config["Args"],
        "State": {k: state.get(k, d) for k, d in (
            ("Status", "created"), ("Running", False), ("Paused", False), ("Restarting", False),
            ("OOMKilled", False), ("Dead", False), ("Pid", 0), ("ExitCode", 0), ("Error", ""),
            ("StartedAt", "0001-01-01T00:00:00Z"), ("FinishedAt", "0001-01-01T00:00:00Z"))},
        "Image": c.config["Image"],
        "ResolvConfPath": c.path("resolv.conf"), "HostnamePath": c.path("hostname"), "HostsPath": c.path("hosts"),
        "LogPath": c.path("container.log"), "Name": "/" + c.name, "RestartCount": 0,
        "Driver": "strata-unionfs", "Platform": "linux",
        "HostConfig": {"CpuShares": hc["CpuShares"], "Memory": hc["Memory"], "MemorySwap": hc["MemorySwap"],
                       "NetworkMode": hc["NetworkMode"], "AutoRemove": hc["AutoRemove"],
                       "SecurityOpt": hc.get("SecurityOpt"), "Devices": hc.get("Devices", []),
                       "DeviceCgroupRules": hc.get("DeviceCgroupRules"),
                       "CgroupVersion": str(c.config["Cgroup"]["Version"]),
                       "CpuWeight": cgroups.shares_to_weight(hc["CpuShares"]) if hc["CpuShares"] else 0,
                       "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0}},
        "GraphDriver": {"Name": "strata-unionfs", "Data": {
            "LowerDir": ":".join(c.config["LowerDirs"]), "UpperDir": c.path("upper"),
            "WorkDir": c.path("work"), "MergedDir": c.path("merged")}},
        "Mounts": [],  # volumes and binds: none yet (their own issue)
        "Config": {"Hostname": cfg["Hostname"], "Env": cfg["Env"], "Cmd": cfg["Cmd"],
                   "Entrypoint": cfg["Entrypoint"], "Image": cfg["Image"], "WorkingDir": cfg["WorkingDir"],
                   "User": cfg["User"], "Tty": cfg["Tty"], "OpenStdin": cfg["OpenStdin"],
                   "Labels": cfg.get("Labels") or {}},
        "NetworkSettings": _network_settings(hc["NetworkMode"], state.get("Pid") if running else None),
    }


def cmd_inspect(store: Store, args: argparse.Namespace) -> int:
    """Containers first, then images, as ``docker inspect``; ``--type`` looks only at one kind."""
    docs = []
    status = 0
    for ref in args.names:
        if args.type in (None, "container"):
            try:
                docs.append(inspect_container(_containers(store).get(ref)))
                continue
            except NoSuchContainer:
                if args.type == "container":
                    print(f"Error: No such container: {ref}", file=sys.stderr)
                    status = 1
                    continue
        try:
            docs.append(store.inspect_image(ref))
        except StoreError as e:
            if "No such image" not in str(e):
                print(f"Error: {e}", file=sys.stderr)
            else:
                print(f"Error: No such {'image' if args.type == 'image' else 'object'}: {ref}", file=sys.stderr)
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
        return now - sum(float(n) * scale[u] for n, _, u in re.findall(r"([0-9]+(\.[0-9]+)?)(ns|us|µs|ms|s|m|h)", value))
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
    c = _containers(store).get(args.container)
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


# -- life cycle -------------------------------------------------------------------------------------
def _wait_exited(c: Container, timeout: float | None) -> bool:
    """Poll the state until the supervisor has recorded the end (bounded by ``timeout``)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while c.state().get("Status") in ("running", "starting"):
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _signal(c: Container, sig: int) -> None:
    state = c.state()
    if not state.get("Running") or not state.get("Pid"):
        c.reclaim()  # whatever a dead supervisor left goes now: nothing runs when we say so
        raise RunnerError(f"Cannot kill container: {c.name}: container {c.id} is not running")
    try:
        os.kill(state["Pid"], sig)
    except ProcessLookupError:
        pass


def cmd_stop(store: Store, args: argparse.Namespace) -> int:
    for ref in args.containers:
        c = _containers(store).get(ref)
        if c.state().get("Running"):
            _signal(c, signal.SIGTERM)
            if not _wait_exited(c, args.time) and c.state().get("Running"):
                _signal(c, signal.SIGKILL)  # it ignored SIGTERM for -t seconds
                _wait_exited(c, 30)
        else:
            c.reclaim()  # a dead supervisor's leftovers: stopped now, as the state says
        print(ref)
    return 0


def parse_signal(value: str) -> int:
    """Docker's ParseSignal, checked as its daemon does before sending: a number 1..SIGRTMAX or a
    name with or without SIG (any case): the signal module's, RTMIN+n and RTMAX-n."""
    name = value.upper().removeprefix("SIG")
    number: int | None = None
    if re.fullmatch(r"[0-9]{1,3}", value):
        number = int(value)
    elif "SIG" + name in signal.Signals.__members__:  # not SIG_DFL, SIG_IGN: those are handlers
        number = signal.Signals["SIG" + name].value
    elif m := re.fullmatch(r"RTMIN\+([0-9]{1,3})", name):
        number = signal.SIGRTMIN + int(m[1])
    elif m := re.fullmatch(r"RTMAX-([0-9]{1,3})", name):
        number = signal.SIGRTMAX - int(m[1])
    if number is None or not (1 <= number <= signal.SIGRTMAX) or (name.startswith("RT") and number < signal.SIGRTMIN):
        raise RunnerError(f"Invalid signal: {value}")
    return number


def cmd_kill(store: Store, args: argparse.Namespace) -> int:
    sig = parse_signal(args.signal)
    for ref in args.containers:
        _signal(_containers(store).get(ref), sig)
        print(ref)
    return 0


def cmd_start(store: Store, args: argparse.Namespace) -> int:
    for ref in args.containers:
        c = _containers(store).get(ref)
        if not c.state().get("Running"):
            if (mounted := ImageMounts(store.root.path).of_container(c.id)) is not None:
                raise ContainerConflict(f"container {c.name} is mounted at {mounted.mountpoint} for inspection: "
                                        "strata umount it first")
            code, detail = _start_detached(store, c)
            if code:
                raise RunnerError(f"failed to start container {ref}: {detail}")
        print(ref)
    return 0


def cmd_wait(store: Store, args: argparse.Namespace) -> int:
    for ref in args.containers:
        c = _containers(store).get(ref)
        _wait_exited(c, None)
        print(c.state().get("ExitCode", 0))
    return 0


def cmd_rm(store: Store, args: argparse.Namespace) -> int:
    status = 0
    containers = _containers(store)
    for ref in args.containers:
        try:
            c = containers.get(ref)
            state = c.state()
            if state.get("Running"):
                if not args.force:
                    raise ContainerConflict(
                        f"You cannot remove a running container {c.id}. Stop the container before attempting "
                        "removal or force remove")
                _signal(c, signal.SIGKILL)
                _wait_exited(c, 30)
            mounted = ImageMounts(store.root.path).of_container(c.id)
            if mounted is not None:
                if not args.force:
                    raise ContainerConflict(f"container {c.name} is mounted at {mounted.mountpoint}: strata umount "
                                            "it first, or rm -f")
                ImageMounts(store.root.path).unmount(mounted)
            if os.path.exists(c.dir):
                containers.remove(c)  # under the supervisor's lock: refused if a start began meanwhile
            print(ref)
        except RunnerError as e:
            print(f"Error: {e}", file=sys.stderr)
            status = 1
    return status


def _exec_env(cfg: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The container's environment, then TERM for -t, then -e (NAME alone: this one's value, if set)."""
    env = list(cfg["Env"])
    for item in (["TERM=xterm"] if args.tty else []) + list(args.env or []):
        key = item.split("=", 1)[0]
        if "=" not in item:
            if key not in os.environ:
                continue
            item = f"{key}={os.environ[key]}"
        env = [e for e in env if e.split("=", 1)[0] != key] + [item]
    return env


def _joined(spec: dict[str, Any], stdio: tuple[int, int, int] | None, detach: bool, close: list[int]) -> int:
    """Fork the process that joins the container (``init.join``, with ``stdio`` as its fds 0-2, and
    none of ``close``); with ``detach``, a grandchild in its own session that nothing waits for.
    Returns the pid to wait for."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()  # this process is single-threaded: its fork may join the container's namespaces
    if pid:
        return pid
    code = 126
    try:
        if stdio is not None:
            for target, fd in enumerate(stdio):
                os.dup2(fd, target)
        for fd in close:
            os.close(fd)
        if detach:
            os.setsid()
            if os.fork():
                code = 0
                return 0
        code = init.join(spec)
    finally:
        os._exit(code)


def cmd_exec(store: Store, args: argparse.Namespace) -> int:
    """Docker's exec: stdin only with -i, a pty with -t (from the container's own /dev/pts), -d
    leaves the command running and returns once it has started."""
    from ..supervisor import container_filter

    if not args.command:  # REMAINDER takes nothing as well: say it as a missing argument
        raise ParseError(f"'{args._prog}' is missing an argument: command", f"See '{args._prog} --help'.")
    if args.tty and args.interactive and not os.isatty(0):
        print(NOT_A_TTY, file=sys.stderr)
        return 1
    _check_env(args.env or [])
    c = _containers(store).get(args.container)
    state = c.state()
    if not state.get("Running"):
        raise ContainerConflict(f"Container {c.id} is not running")
    cfg = c.config["Config"]
    status_r, status_w = os.pipe()
    spec = {"pid": state["Pid"], "args": args.command, "env": _exec_env(cfg, args),
            "cwd": args.workdir or cfg["WorkingDir"] or "/", "user": args.user or cfg["User"] or "0",
            "tty": bool(args.tty and not args.detach), "status_fd": status_w, "seccomp": container_filter(c.config),
            "cgroup_procs": cgroups.load(c.config["Cgroup"]["Version"], c.id).procs_files()}
    opened = [status_r, status_w]
    master = None
    try:
        if args.detach:
            null = os.open(os.devnull, os.O_RDWR)
            opened.append(null)
            stdio: tuple[int, int, int] | None = (null, null, null)
        elif args.tty:
            master, slave = terminal.container_pty(state["Pid"])
            opened += [master, slave]
            stdio = (slave, slave, slave)
        elif not args.interactive:
            null = os.open(os.devnull, os.O_RDONLY)
            opened.append(null)
            stdio = (null, 1, 2)
        else:
            stdio = None  # the client's own stdin, stdout and stderr
        pid = _joined(spec, stdio, args.detach, [status_r] + ([master] if master is not None else []))
        for fd in opened[1:]:
            if fd != master:
                os.close(fd)
        opened = [status_r] + ([master] if master is not None else [])
        if master is not None:
            pidfd = os.pidfd_open(pid)
            opened.append(pidfd)
            with terminal.raw(0 if args.interactive else None), terminal.following_size(1, master):
                terminal.relay(master, 0 if args.interactive else None, 1, pidfd)
        with os.fdopen(os.dup(status_r), "rb") as f:
            report = f.read().decode(errors="replace").splitlines()
        _, status = os.waitpid(pid, 0)
    finally:
        for fd in opened:
            os.close(fd)
    code = 0 if args.detach else init.exit_code(status)
    for line in report:
        if line.startswith("error "):
            _, failed, message = line.split(" ", 2)
            print(f"Error: {message}", file=sys.stderr)
            return int(failed)
    return code


# -- changes: diff, commit, export -------------------------------------------------------------------
def cmd_diff(store: Store, args: argparse.Namespace) -> int:
    c = _containers(store).get(args.container)
    for kind, path in layerdiff.changes(c.path("upper"), c.config["LowerDirs"]):
        print(f"{kind} {path}")
    return 0


def cmd_commit(store: Store, args: argparse.Namespace) -> int:
    c = _containers(store).get(args.container)
    running = c.state().get("Running")
    cg = cgroups.load(c.config["Cgroup"]["Version"], c.id)
    pause = running and args.pause.lower() not in ("false", "0", "no")
    created_by = " ".join(c.config["Command"])
    if pause:
        cg.freeze(True)  # nothing writes to the upper while it is packed
    try:
        image_id = store.commit(c.config["Image"], c.path("upper"), args.repository, created_by,
                                comment=args.message or "", author=args.author or "", changes=args.change or [])
    finally:
        if pause:
            cg.freeze(False)
    print(image_id)
    return 0


def cmd_export(store: Store, args: argparse.Namespace) -> int:
    from store.tarwrite import write_entries

    c = _containers(store).get(args.container)
    init = [c.path("init")] if os.path.isdir(c.path("init")) else []  # /etc/hosts and friends, as docker export
    entries = layerdiff.flatten(c.path("upper"), init + c.config["LowerDirs"])
    if not args.output or args.output == "-":
        if sys.stdout.isatty():
            raise RunnerError("cowardly refusing to write a tar to a terminal: use -o or redirect")
        write_entries(entries, sys.stdout.buffer)
        return 0
    target = os.path.abspath(args.output)
    tmp = f"{target}.tmp-{os.getpid()}"
    try:
        out = open(tmp, "wb")
    except OSError as e:
        raise UsageError(f"cannot write {target}: {e.strerror}") from None
    try:
        with out:
            write_entries(entries, out)
        try:
            os.replace(tmp, target)
        except OSError as e:  # a directory there, say
            raise UsageError(f"cannot write {target}: {e.strerror}") from None
    except BaseException:
        os.unlink(tmp)
        raise
    return 0


# -- argument parsing -----------------------------------------------------------------------------
def add_parsers(sub: Any) -> None:
    p = sub.add_parser("run", help="run a command in a new container",
                       description="Create a container on IMAGE (its own writable layer) and run COMMAND in it "
                                   "(default: the image's ENTRYPOINT + CMD); attached unless -d.")
    p.add_argument("-d", "--detach", action="store_true", help="run in the background and print the container id")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-TTY for the command")
    p.add_argument("-i", "--interactive", action="store_true",
                   help="keep STDIN open and attach it to the command (-it: stdin must be a terminal)")
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    p.add_argument("--name", help="the container's name (default: a generated one, as adjective_name)")
    p.add_argument("-e", "--env", action="append", metavar="NAME[=VALUE]",
                   help="set an environment variable (NAME alone: its value here, if set); repeatable")
    p.add_argument("-l", "--label", action="append", metavar="KEY[=VALUE]",
                   help="a label on the container (after the image's); repeatable")
    p.add_argument("-w", "--workdir", metavar="DIR", help="working directory in the container (default: the "
                                                         "image's WORKDIR, else /)")
    p.add_argument("-u", "--user", metavar="USER[:GROUP]",
                   help="user name or uid, maybe with a group (default: the image's USER, else root)")
    p.add_argument("--hostname", help="the container's hostname (default: the first 12 digits of its id)")
    p.add_argument("--device", action="append", metavar="HOST[:CONTAINER][:rwm]",
                   help="a host device, made in the container's /dev and opened to it; repeatable")
    p.add_argument("--device-cgroup-rule", action="append", dest="device_cgroup_rule", metavar="'TYPE MAJOR:MINOR ACCESS'",
                   help="more devices the container may use, as 'c 42:* rmw'; repeatable")
    p.add_argument("--security-opt", action="append", dest="security_opt", metavar="OPTION",
                   help="seccomp=unconfined, seccomp=PROFILE.json or no-new-privileges (default: Docker's "
                        "seccomp profile, no new privileges)")
    p.add_argument("--cpu-shares", type=int64, dest="cpu_shares", metavar="N",
                   help="relative CPU weight, 2..262144 (default 0: the kernel's 1024)")
    p.add_argument("-m", "--memory", metavar="SIZE",
                   help="memory limit as 64m, 1g... (at least 6MB; default: none); swap the same again")
    p.add_argument("--network", default="none", metavar="MODE",
                   help=" or ".join(NETWORKS) + ": none has only a loopback, host shares the host's (default none)")
    p.add_argument("image", help="the image: a tag or an id (prefix)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments (default: the image's)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("ps", help="list containers", description="List containers (default: running ones).")
    p.add_argument("-a", "--all", action="store_true", help="show every container (default: only running ones)")
    p.add_argument("-f", "--filter", action="append", metavar="KEY=VALUE",
                   help="status=created|running|exited|..., name=REGEX, id=PREFIX, label=KEY[=VALUE], ancestor=IMAGE; "
                        "repeatable (the same key: either value; different keys: all)")
    p.add_argument("-q", "--quiet", action="store_true", help="only container ids")
    p.add_argument("--no-trunc", action="store_true", help="full ids and commands (default: shortened)")
    p.add_argument("--format", choices=["table", "json"], default="table",
                   help="table, or json: one JSON object per line (default table)")
    p.set_defaults(func=cmd_ps)

    p = sub.add_parser("top", help="the processes of a container")
    p.add_argument("container", help="a running container: a name or an id (prefix)")
    p.set_defaults(func=cmd_top)

    p = sub.add_parser("inspect", help="low-level information on containers or images, as JSON")
    p.add_argument("-f", "--format", metavar="TEMPLATE",
                   help="a Go template per object instead of JSON, as '{{.State.Status}}' or '{{json .Config}}'")
    p.add_argument("--type", choices=["container", "image"],
                   help="look only at containers or only at images (default: containers, then images)")
    p.add_argument("names", nargs="+", help="containers (names or ids) and images (tags or ids)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("logs", help="a container's output")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing while the container runs")
    p.add_argument("-n", "--tail", metavar="N", help="only the last N lines (default: all)")
    p.add_argument("-t", "--timestamps", action="store_true", help="put each line's time (RFC 3339) before it")
    p.add_argument("--since", metavar="WHEN",
                   help="only lines since a time (2024-01-02T03:04:05Z), Unix seconds, or a duration ago (10m)")
    p.add_argument("container", help="a name or an id (prefix)")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("stop", help="SIGTERM, then SIGKILL after -t seconds")
    p.add_argument("-t", "--time", type=float, default=10, metavar="SECONDS",
                   help="seconds to wait after SIGTERM before SIGKILL (default 10)")
    p.add_argument("containers", nargs="+", help="names or ids (prefixes)")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("kill", help="send a signal (SIGKILL by default)")
    p.add_argument("-s", "--signal", default="KILL", metavar="SIGNAL",
                   help="a signal name (TERM, SIGHUP, RTMIN+1) or number (default KILL)")
    p.add_argument("containers", nargs="+", help="names or ids (prefixes)")
    p.set_defaults(func=cmd_kill)

    p = sub.add_parser("start", help="start exited containers again (same writable layer)")
    p.add_argument("containers", nargs="+", help="names or ids (prefixes)")
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("wait", help="wait for containers to exit; print their exit codes")
    p.add_argument("containers", nargs="+", help="names or ids (prefixes)")
    p.set_defaults(func=cmd_wait)

    p = sub.add_parser("rm", help="remove containers")
    p.add_argument("-f", "--force", action="store_true", help="kill a running container first (default: refused)")
    p.add_argument("containers", nargs="+", help="names or ids (prefixes)")
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser("diff", help="what a container changed: A added, C changed, D deleted")
    p.add_argument("container", help="a name or an id (prefix)")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("commit", help="a new image from a container's changes")
    p.add_argument("-m", "--message", help="the commit message (default: none)")
    p.add_argument("-a", "--author", help="the author, as 'Name <email>' (default: none)")
    p.add_argument("-c", "--change", action="append", metavar="INSTRUCTION",
                   help="apply a Dockerfile instruction (CMD, ENV, LABEL...) to the new image; repeatable")
    p.add_argument("-p", "--pause", default="true", metavar="BOOL",
                   help="freeze a running container while packing (default true)")
    p.add_argument("container", help="a name or an id (prefix)")
    p.add_argument("repository", nargs="?", help="tag for the image, NAME[:TAG] (default: none, untagged)")
    p.set_defaults(func=cmd_commit)

    p = sub.add_parser("export", help="a container's whole tree as a tar")
    p.add_argument("-o", "--output", metavar="FILE", help="file to write (default: stdout, not a terminal)")
    p.add_argument("container", help="a name or an id (prefix)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("exec", help="run a command in a running container")
    p.add_argument("-d", "--detach", action="store_true", help="run the command in the background; print nothing")
    p.add_argument("-i", "--interactive", action="store_true", help="keep STDIN open and attach it to the command")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-TTY (/dev/pts/N in the container)")
    p.add_argument("-e", "--env", action="append", metavar="NAME[=VALUE]",
                   help="set an environment variable (NAME alone: its value here); repeatable")
    p.add_argument("-w", "--workdir", metavar="DIR", help="working directory in the container (default: the "
                                                         "container's)")
    p.add_argument("-u", "--user", metavar="USER[:GROUP]", help="user name or uid, maybe with a group (default: "
                                                               "the container's user)")
    p.add_argument("container", help="the container: a name or an id (prefix)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")
    p.set_defaults(func=cmd_exec)
