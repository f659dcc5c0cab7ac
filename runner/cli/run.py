"""``strata run``: the container's config from the image's and the flags (bad input refused before
anything is created, flags first as Docker's CLI checks them), then the container, attached or under
a detached supervisor (``runner.lifecycle``)."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from typing import Any

from store import Store

from .. import cgroups, devices, events, lifecycle, seccomp, userns, volumemounts
from ..containers import check_name
from ..errors import RunnerError
from ..net import ports
from . import mountflags, netflags, runflags
from .errors import UsageError
from .format import quoted
from .parsing import int64
from .units import effective_cpu_shares, memory_swap, parse_memory

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_NAME_MAX = 64  # bytes: sethostname(2) refuses more
NOT_A_TTY = "the input device is not a TTY"  # Docker's words (exit 1) for -it with stdin from a pipe or file


def check_env(entries: list[str]) -> None:
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
    the container keeps the profile it was created with) and ``no-new-privileges[=true|false]`` (off
    by default, as Docker's: ``oci.privileges`` reads it). Returns the container's ``Seccomp``
    setting: "default", a profile, or None (unconfined)."""
    setting: str | dict[str, Any] | None = "default"
    for option in options:
        key, sep, value = option.partition("=" if "=" in option else ":")
        if key == "seccomp" and sep and value:
            setting = None if value == "unconfined" else seccomp.load_profile(value)
        elif key == "no-new-privileges" and (not sep or value.lower() in ("true", "false", "1", "0")):
            continue
        else:
            raise RunnerError(
                f"Invalid --security-opt: {quoted(option)} (strata knows seccomp=unconfined|FILE and no-new-privileges)"
            )
    return setting


def _container_config(store: Store, args: argparse.Namespace, cid: str) -> dict[str, Any]:
    """Everything ``run`` decides before anything is created; bad input raises here, flags first
    (as Docker's CLI checks them before it asks the daemon), then the image."""
    memory = parse_memory(args.memory) if args.memory else 0
    cpu_shares = effective_cpu_shares(args.cpu_shares or 0)
    ports.bindings(args.publish or [])  # -p's syntax, with the other flags (the network: below)
    env_file = runflags.env_file_entries(args.env_file or [])
    check_env(args.env or [])
    if args.hostname:
        _check_hostname(args.hostname)
    seccomp_setting = _security_options(args.security_opt or [])
    host_devices = [devices.host_device(spec) for spec in args.device or []]
    device_rules = [rule for _, rule in host_devices] + [devices.parse_rule(t) for t in args.device_cgroup_rule or []]
    image_id = store.images.resolve(args.image)
    image = store.images.config(image_id)
    settings = image.get("config") or {}
    storage = mountflags.plan(store.root.path, args, settings.get("Volumes"))
    net = netflags.plan(store.root.path, args, settings)
    cg = cgroups.for_host(cid)
    flags = runflags.plan(args, settings, memory, cg.version)
    entrypoint, cmd = runflags.command(args, settings)
    command = list(entrypoint) + list(cmd)
    if not command:
        raise RunnerError("no command specified")
    env = list(settings.get("Env") or [])
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, DEFAULT_PATH)
    hostname = args.hostname or cid[:12]
    extra = [f"HOSTNAME={hostname}"] + (["TERM=xterm"] if args.tty else []) + env_file + list(args.env or [])
    for item in extra:
        key = item.split("=", 1)[0]
        if "=" not in item:  # -e NAME: take the value from this environment, as Docker does
            if key not in os.environ:
                continue
            item = f"{key}={os.environ[key]}"
        env = [e for e in env if e.split("=", 1)[0] != key] + [item]
    chain = store.images.chain(image_id)
    lowers = [store.layers.diff_dir(c) for c in reversed(chain)]
    if not cg.version and (memory or cpu_shares):  # rootless without a delegated cgroup: as rootless podman
        print("WARNING: no cgroup is delegated to you: --memory and --cpu-shares are not enforced", file=sys.stderr)
        memory = cpu_shares = 0
    if os.geteuid() != 0 and (why := userns.single_reason(os.getuid())) is not None:  # as podman
        print(
            f"WARNING: {why}: the container has one id, root (the image's other owners show as nobody)", file=sys.stderr
        )
    return {
        "Image": image_id,
        "ImageRef": args.image,
        "Command": command,
        "Path": command[0],
        "Args": command[1:],
        "Config": {
            "Hostname": hostname,
            "Env": env,
            "Cmd": list(cmd),
            "Entrypoint": list(entrypoint) or None,
            "WorkingDir": args.workdir or settings.get("WorkingDir") or "",
            "User": args.user or settings.get("User") or "",
            "Tty": bool(args.tty),
            "OpenStdin": bool(args.interactive),
            "Image": args.image,
            "Labels": {**(settings.get("Labels") or {}), **_labels(args.label)},
            "Volumes": storage.volumes or None,
            "ExposedPorts": net["ExposedPorts"],
            **flags["Config"],
        },
        "HostConfig": {
            "CpuShares": cpu_shares,
            "Memory": memory,
            "MemorySwap": memory_swap(memory),
            **net["HostConfig"],
            "AutoRemove": bool(args.rm),
            "SecurityOpt": list(args.security_opt or []) or None,
            "Devices": [
                {"PathOnHost": spec.split(":")[0], "PathInContainer": node["path"], "CgroupPermissions": rule["access"]}
                for spec, (node, rule) in zip(args.device or [], host_devices, strict=True)
            ],
            "DeviceCgroupRules": list(args.device_cgroup_rule or []) or None,
            **storage.host_config,
            **flags["HostConfig"],
        },
        "MountPoints": storage.mounts,
        "NetworkID": net["NetworkID"],  # the network's, as its name may name another one later
        "Seccomp": seccomp_setting,
        "LinuxDevices": [node for node, _ in host_devices],  # the runtime-spec's linux.devices
        "DeviceRules": device_rules,  # and its resources.devices, after the defaults
        "Cgroup": {"Version": cg.version, "Dirs": cg.dirs()},
        "LowerDirs": lowers,
    }


def cmd_run(store: Store, args: argparse.Namespace) -> int:
    from ..stdio import Attach
    from ..supervisor import run_attached

    if args.tty and args.interactive and not os.isatty(0):  # keys to a pty that will never see EOF: refused
        print(NOT_A_TTY, file=sys.stderr)
        return 1
    if args.name is not None:
        check_name(args.name)  # before the image is looked up, as Docker's CLI checks flags first
    cid = secrets.token_hex(32)
    with store.root.pinned():  # rmi cannot take the image's layers between the look-up and the record
        config = _container_config(store, args, cid)
        container = volumemounts.create(store.root.path, config, args.name, cid)  # with the volumes it mounts
    events.record(store.root.path, "create", container.config)
    if args.detach:
        lifecycle.start_detached(store.root.path, container)  # StartFailed: its code is the exit code
        print(container.id)
        return 0
    if (args.tty and args.interactive) or config["HostConfig"]["RestartPolicy"]["Name"] != "no":
        from .attach import run_through_supervisor  # detachable, and restarted by its policy

        return run_through_supervisor(store.root.path, container, args)
    attach = Attach(
        stdin=sys.stdin.fileno() if args.interactive else None, stdout=sys.stdout.fileno(), stderr=sys.stderr.fileno()
    )
    sys.stdout.flush()
    code, error = run_attached(store.root.path, container, attach)
    if error:
        print(f"Error: {error}", file=sys.stderr)
    return code


def cmd_create(store: Store, args: argparse.Namespace) -> int:
    """``create``: ``run``'s record, volumes and checks, and its id; ``start`` runs it."""
    if args.name is not None:
        check_name(args.name)
    cid = secrets.token_hex(32)
    with store.root.pinned():
        config = _container_config(store, args, cid)
        container = volumemounts.create(store.root.path, config, args.name, cid)
    events.record(store.root.path, "create", container.config)
    print(container.id)
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run a command in a new container",
        description="Create a container on IMAGE (its own writable layer) and run COMMAND in it "
        "(default: the image's ENTRYPOINT + CMD); attached unless -d.",
    )
    p.add_argument("-d", "--detach", action="store_true", help="run in the background and print the container id")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-TTY for the command")
    p.add_argument(
        "-i",
        "--interactive",
        action="store_true",
        help="keep STDIN open and attach it to the command (-it: stdin must be a terminal)",
    )
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    p.add_argument("--name", help="the container's name (default: a generated one, as adjective_name)")
    p.add_argument(
        "-e",
        "--env",
        action="append",
        metavar="NAME[=VALUE]",
        help="set an environment variable (NAME alone: its value here, if set); repeatable",
    )
    p.add_argument(
        "-l",
        "--label",
        action="append",
        metavar="KEY[=VALUE]",
        help="a label on the container (after the image's); repeatable",
    )
    p.add_argument(
        "-w",
        "--workdir",
        metavar="DIR",
        help="working directory in the container (default: the image's WORKDIR, else /)",
    )
    p.add_argument(
        "-u",
        "--user",
        metavar="USER[:GROUP]",
        help="user name or uid, maybe with a group (default: the image's USER, else root)",
    )
    p.add_argument("--hostname", help="the container's hostname (default: the first 12 digits of its id)")
    p.add_argument(
        "--device",
        action="append",
        metavar="HOST[:CONTAINER][:rwm]",
        help="a host device, made in the container's /dev and opened to it; repeatable",
    )
    p.add_argument(
        "--device-cgroup-rule",
        action="append",
        dest="device_cgroup_rule",
        metavar="'TYPE MAJOR:MINOR ACCESS'",
        help="more devices the container may use, as 'c 42:* rmw'; repeatable",
    )
    p.add_argument(
        "--security-opt",
        action="append",
        dest="security_opt",
        metavar="OPTION",
        help="seccomp=unconfined, seccomp=PROFILE.json or no-new-privileges (default: Docker's "
        "seccomp profile; setuid programs gain privileges, as in Docker)",
    )
    p.add_argument(
        "--cpu-shares",
        type=int64,
        dest="cpu_shares",
        metavar="N",
        help="relative CPU weight, 2..262144 (default 0: the kernel's 1024)",
    )
    p.add_argument(
        "-m",
        "--memory",
        metavar="SIZE",
        help="memory limit as 64m, 1g... (at least 6MB; default: none); swap the same again",
    )
    netflags.add_arguments(p)
    mountflags.add_arguments(p)
    runflags.add_arguments(p)
    p.add_argument("image", help="the image: a tag or an id (prefix)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments (default: the image's)")
    p.set_defaults(func=cmd_run)
    # create: run's flags but -d (it starts nothing)
    c = sub.add_parser(
        "create",
        parents=[p],
        add_help=False,
        help="create a new container (start runs it)",
        description="Create a container on IMAGE as run would, and print its id; strata start runs it.",
    )
    detach = next(a for a in c._actions if a.dest == "detach")
    c._remove_action(detach)
    for flag in detach.option_strings:
        del c._option_string_actions[flag]
    c.set_defaults(func=cmd_create)
