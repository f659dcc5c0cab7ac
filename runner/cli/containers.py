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
from . import terminal
from .errors import UsageError
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
                   "Image": args.image},
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


def cmd_ps(store: Store, args: argparse.Namespace) -> int:
    rows = []
    for c in _containers(store).all():
        state = c.state()
        if not args.all and not state.get("Running"):
            continue
        command = json.dumps(" ".join(c.config["Command"]))
        rows.append({
            "ID": c.id[:12], "Image": c.config["ImageRef"], "Command": command,
            "CreatedAt": c.config["Created"], "RunningFor": since(parse_when(c.config["Created"])),
            "Status": status_text(state), "State": state.get("Status"), "Names": c.name,
        })
    if args.quiet:
        for r in rows:
            print(r["ID"])
    elif args.format == "json":
        for r in rows:
            print(json.dumps(r))
    else:
        print(table(["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"],
                    [[r["ID"], r["Image"], ellipsis(r["Command"], 20), r["RunningFor"], r["Status"], r["Names"]]
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


def inspect_container(c: Container) -> dict[str, Any]:
    state = c.state()
    cfg, hc = c.config["Config"], c.config["HostConfig"]
    return {
        "Id": c.id, "Created": c.config["Created"], "Path": c.config["Path"], "Args": c.config["Args"],
        "State": {k: state.get(k, d) for k, d in (
            ("Status", "created"), ("Running", False), ("Paused", False), ("Restarting", False),
            ("OOMKilled", False), ("Dead", False), ("Pid", 0), ("ExitCode", 0), ("Error", ""),
            ("StartedAt", "0001-01-01T00:00:00Z"), ("FinishedAt", "0001-01-01T00:00:00Z"))},
        "Image": c.config["Image"], "Name": "/" + c.name, "Driver": "strata-unionfs",
        "LogPath": c.path("container.log"),
        "HostConfig": {"CpuShares": hc["CpuShares"], "Memory": hc["Memory"], "MemorySwap": hc["MemorySwap"],
                       "NetworkMode": hc["NetworkMode"], "AutoRemove": hc["AutoRemove"],
                       "SecurityOpt": hc.get("SecurityOpt"), "Devices": hc.get("Devices", []),
                       "DeviceCgroupRules": hc.get("DeviceCgroupRules"),
                       "CgroupVersion": str(c.config["Cgroup"]["Version"]),
                       "CpuWeight": cgroups.shares_to_weight(hc["CpuShares"]) if hc["CpuShares"] else 0},
        "GraphDriver": {"Name": "strata-unionfs", "Data": {
            "LowerDir": ":".join(c.config["LowerDirs"]), "UpperDir": c.path("upper"),
            "WorkDir": c.path("work"), "MergedDir": c.path("merged")}},
        "Config": {"Hostname": cfg["Hostname"], "Env": cfg["Env"], "Cmd": cfg["Cmd"],
                   "Entrypoint": cfg["Entrypoint"], "Image": cfg["Image"], "WorkingDir": cfg["WorkingDir"],
                   "User": cfg["User"], "Tty": cfg["Tty"], "OpenStdin": cfg["OpenStdin"]},
    }


def cmd_inspect(store: Store, args: argparse.Namespace) -> int:
    """Containers first, then images, as ``docker inspect``."""
    docs = []
    status = 0
    for ref in args.names:
        try:
            docs.append(inspect_container(_containers(store).get(ref)))
            continue
        except NoSuchContainer:
            pass
        try:
            docs.append(store.inspect_image(ref))
        except StoreError as e:
            print(f"Error: No such object: {ref}" if "No such image" in str(e) else f"Error: {e}", file=sys.stderr)
            status = 1
    print(json.dumps(docs, indent=4))
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


def cmd_logs(store: Store, args: argparse.Namespace) -> int:
    tail = _tail(args.tail)
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
                out = sys.stdout if entry.get("stream") == "stdout" else sys.stderr
                out.write(entry["log"])
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
    p = sub.add_parser("run", help="run a command in a new container")
    p.add_argument("-d", "--detach", action="store_true")
    p.add_argument("-t", "--tty", action="store_true")
    p.add_argument("-i", "--interactive", action="store_true")
    p.add_argument("--rm", action="store_true")
    p.add_argument("--name")
    p.add_argument("-e", "--env", action="append")
    p.add_argument("-w", "--workdir")
    p.add_argument("-u", "--user")
    p.add_argument("--hostname")
    p.add_argument("--device", action="append",
                   help="HOST[:CONTAINER][:rwm]: a host device, made in the container's /dev and opened to it")
    p.add_argument("--device-cgroup-rule", action="append", dest="device_cgroup_rule",
                   help="'TYPE MAJOR:MINOR ACCESS' (as 'c 42:* rmw'): devices the container may use")
    p.add_argument("--security-opt", action="append", dest="security_opt",
                   help="seccomp=unconfined or seccomp=PROFILE.json (default: Docker's profile)")
    p.add_argument("--cpu-shares", type=int64, dest="cpu_shares", help="relative CPU weight (2..262144)")
    p.add_argument("-m", "--memory")
    p.add_argument("--network", default="none", help=" or ".join(NETWORKS) + " (default none)")
    p.add_argument("image")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("ps", help="list containers")
    p.add_argument("-a", "--all", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_ps)

    p = sub.add_parser("top", help="the processes of a container")
    p.add_argument("container")
    p.set_defaults(func=cmd_top)

    p = sub.add_parser("inspect", help="low-level information on containers or images, as JSON")
    p.add_argument("names", nargs="+")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("logs", help="a container's output")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-n", "--tail")
    p.add_argument("container")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("stop", help="SIGTERM, then SIGKILL after -t seconds")
    p.add_argument("-t", "--time", type=float, default=10)
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("kill", help="send a signal (SIGKILL by default)")
    p.add_argument("-s", "--signal", default="KILL")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=cmd_kill)

    p = sub.add_parser("start", help="start exited containers again (same writable layer)")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("wait", help="wait for containers to exit; print their exit codes")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=cmd_wait)

    p = sub.add_parser("rm", help="remove containers")
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser("diff", help="what a container changed: A added, C changed, D deleted")
    p.add_argument("container")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("commit", help="a new image from a container's changes")
    p.add_argument("-m", "--message")
    p.add_argument("-a", "--author")
    p.add_argument("-c", "--change", action="append")
    p.add_argument("-p", "--pause", default="true", help="freeze a running container while packing (default true)")
    p.add_argument("container")
    p.add_argument("repository", nargs="?")
    p.set_defaults(func=cmd_commit)

    p = sub.add_parser("export", help="a container's whole tree as a tar")
    p.add_argument("-o", "--output")
    p.add_argument("container")
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
