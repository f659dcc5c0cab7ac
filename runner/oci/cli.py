"""``strata-oci``: runc's command line, as conmon, containerd's runc shim and CRI-O drive it (global
flags before the verb, the container id last). Parsing, output and exit codes only: the lifecycle
is ``runtime.py``'s.

Errors are one line on stderr (``strata-oci: WHAT``) and, with ``--log``, a line in the log file
(``log.py``; ``--log-format json``: ``{"level": "error", "msg": ..., "time": ...}``, which containerd
and podman read back), exit 1. Texts callers match are runc's: ``container does not exist``, ``container not
running``. An unknown flag, verb or config field is refused, never ignored.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import RunnerError
from . import hooks, resources, spec
from . import runtime as rt
from .log import Log

TYPE_CHECKING = False
if TYPE_CHECKING:  # (the annotations alone use it)
    from typing import Any, NoReturn

VERSION = "0.1.0"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_abbrev=False, add_help=False, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


VERBS = (
    "create",
    "run",
    "start",
    "pause",
    "resume",
    "state",
    "kill",
    "delete",
    "exec",
    "ps",
    "list",
    "update",
    "features",
    "spec",
)


def _top_parser() -> _Parser:
    top = _Parser(prog="strata-oci")
    top.add_argument("--root")
    top.add_argument("--log")
    top.add_argument("--log-format", choices=("text", "json"), default="text")
    top.add_argument("--debug", action="store_true")
    top.add_argument("--systemd-cgroup", action="store_true")
    top.add_argument("--version", "-v", action="store_true")
    top.add_argument("--help", "-h", action="store_true")
    top.add_argument("verb", nargs="?")
    top.add_argument("rest", nargs=argparse.REMAINDER)
    return top


def _verb_parser(name: str) -> _Parser:
    """The parser of one verb (only the one asked for is built: each costs argparse's gettext
    look-ups, and create runs once per container)."""
    p = _Parser(prog=f"strata-oci {name}")
    if name in ("create", "run"):
        p.add_argument("--bundle", "-b", default=".")
        p.add_argument("--pid-file")
        p.add_argument("--console-socket")
        p.add_argument("--preserve-fds", type=int, default=0)
        p.add_argument("--no-pivot", action="store_true")
        p.add_argument("--no-new-keyring", action="store_true")
        if name == "run":
            p.add_argument("--detach", "-d", action="store_true")
            p.add_argument("--keep", action="store_true")
        p.add_argument("id")
    elif name in ("start", "pause", "resume", "state"):
        p.add_argument("id")
    elif name == "kill":
        p.add_argument("--all", "-a", action="store_true")
        p.add_argument("id")
        p.add_argument("signal", nargs="?", default="SIGTERM")
    elif name == "delete":
        p.add_argument("--force", "-f", action="store_true")
        p.add_argument("id")
    elif name == "exec":
        p.add_argument("--process", "-p")
        p.add_argument("--tty", "-t", action="store_true")
        p.add_argument("--detach", "-d", action="store_true")
        p.add_argument("--pid-file")
        p.add_argument("--console-socket")
        p.add_argument("--preserve-fds", type=int, default=0)
        p.add_argument("--cwd")
        p.add_argument("--env", "-e", action="append", default=[])
        p.add_argument("--user", "-u")
        p.add_argument("--additional-gids", "-g", action="append", default=[])
        p.add_argument("--no-new-privs", action="store_true")
        p.add_argument("id")
        p.add_argument("command", nargs=argparse.REMAINDER)
    elif name in ("ps", "list"):
        p.add_argument("--format", "-f", choices=("table", "json"), default="table")
        if name == "ps":
            p.add_argument("id")
        else:
            p.add_argument("--quiet", "-q", action="store_true")
    elif name == "update":
        p.add_argument("--resources", "-r")
        for flag in (
            "--memory",
            "--memory-swap",
            "--cpu-quota",
            "--cpu-period",
            "--cpuset-cpus",
            "--cpuset-mems",
            "--pids-limit",
        ):
            p.add_argument(flag)
        p.add_argument("--cpu-share", "--cpu-shares", dest="cpu_share")
        p.add_argument("id")
    elif name == "spec":
        p.add_argument("--bundle", "-b", default=".")
        p.add_argument("--rootless", action="store_true")
    return p


def _exec_process(r: rt.Runtime, args: argparse.Namespace) -> dict[str, Any]:
    """The process an ``exec`` runs: ``--process FILE`` as it is, else the container's own process
    with the command and flags put over it (runc's ``getProcess``)."""
    if args.process:
        try:
            with open(args.process) as f:
                process: dict[str, Any] = json.load(f)
        except (OSError, ValueError) as e:
            raise RunnerError(f"--process {args.process}: {e}") from None
        if args.command:
            raise UsageError("strata-oci exec: a command and --process exclude each other")
        return process
    if not args.command:
        raise UsageError("strata-oci exec: no command given (arguments or --process)")
    process = json.loads(json.dumps(r.get(args.id).config.get("process") or {}))
    process["args"] = args.command
    process["terminal"] = args.tty
    process.pop("consoleSize", None)
    if args.cwd:
        process["cwd"] = args.cwd
    env = list(process.get("env") or [])
    for item in args.env:
        key = item.split("=", 1)[0]
        env = [e for e in env if e.split("=", 1)[0] != key] + [item]
    process["env"] = env
    if args.user:
        uid, _, gid = args.user.partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()):
            raise UsageError(f"strata-oci exec: --user {args.user}: numbers expected (uid[:gid])")
        process["user"] = {"uid": int(uid), "gid": int(gid or 0)}
    if args.additional_gids:
        process.setdefault("user", {})["additionalGids"] = [int(g) for g in args.additional_gids]
    if args.no_new_privs:
        process["noNewPrivileges"] = True
    return process


def _ps(pids: list[int], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(pids)
    lines = ["PID    CMD"]
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        lines.append(f"{pid:<6} {cmd}")
    return "\n".join(lines)


def _list(states: list[dict[str, Any]], fmt: str, quiet: bool) -> str:
    if quiet:
        return "\n".join(s["id"] for s in states)
    if fmt == "json":
        return json.dumps(states)
    rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
    rows += [(s["id"], str(s["pid"]), s["status"], s["bundle"], s["created"], s["owner"]) for s in states]
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _update_resources(args: argparse.Namespace) -> Any:
    """``update``'s LinuxResources: ``--resources FILE`` (``-``: stdin) or runc's flags, not both."""
    flags = {
        name: getattr(args, name)
        for name in (
            "memory",
            "memory_swap",
            "cpu_quota",
            "cpu_period",
            "cpu_share",
            "cpuset_cpus",
            "cpuset_mems",
            "pids_limit",
        )
    }
    given = {k: v for k, v in flags.items() if v is not None}
    if args.resources:
        if given:
            raise UsageError("strata-oci update: --resources and the flags exclude each other")
        try:
            if args.resources == "-":
                return json.load(sys.stdin)
            with open(args.resources) as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise RunnerError(f"--resources {args.resources}: {e}") from None
    if not given:
        raise UsageError("strata-oci update: nothing to update (--resources FILE|- or flags)")

    def number(flag: str) -> int:
        try:
            return int(given[flag])
        except ValueError:
            raise UsageError(
                f"strata-oci update: --{flag.replace('_', '-')} {given[flag]}: a number expected"
            ) from None

    out: dict[str, dict[str, Any]] = {}
    for flag, section, key in (("memory", "memory", "limit"), ("memory_swap", "memory", "swap")):
        if flag in given:
            out.setdefault(section, {})[key] = resources.ram_in_bytes(given[flag])
    for flag, key in (("cpu_share", "shares"), ("cpu_quota", "quota"), ("cpu_period", "period")):
        if flag in given:
            out.setdefault("cpu", {})[key] = number(flag)
    for flag, key in (("cpuset_cpus", "cpus"), ("cpuset_mems", "mems")):
        if flag in given:
            out.setdefault("cpu", {})[key] = given[flag]
    if "pids_limit" in given:
        out["pids"] = {"limit": number("pids_limit")}
    return out


def _spec(args: argparse.Namespace) -> None:
    path = os.path.join(args.bundle, "config.json")
    if os.path.exists(path):
        raise RunnerError("File config.json exists. Remove it first.")
    with open(path, "w") as f:
        json.dump(spec.default_config(rootless=args.rootless), f, indent=2)
        f.write("\n")


USAGE = """usage: strata-oci [--root DIR] [--log FILE] [--log-format text|json] [--debug] [--systemd-cgroup] VERB ...
verbs: create start state kill delete run exec ps list pause resume update features spec (runc's flags)"""


def run(argv: list[str], log: Log) -> int:
    g = _top_parser().parse_args(argv)
    log.path, log.fmt, log.debug_on = g.log, g.log_format, g.debug
    log.debug(f"strata-oci {' '.join(argv)}")
    if g.version:
        print(f"strata-oci version {VERSION}\nspec: {spec.OCI_VERSION}")
        return 0
    if g.help or not g.verb:
        print(USAGE)
        return 0 if g.help else 1
    if g.verb not in VERBS:
        raise UsageError(f"strata-oci: unknown command {g.verb!r}")
    args = _verb_parser(g.verb).parse_args(g.rest)
    if g.systemd_cgroup and g.verb in ("create", "run"):  # the other verbs act on cgroups made at create
        raise UsageError(
            "strata-oci: --systemd-cgroup: no systemd cgroup driver (strata-oci makes the container's "
            "cgroup itself): set the engine's cgroup manager to cgroupfs"
        )
    r = rt.Runtime(g.root, warn=log.warning)
    verb = g.verb
    if verb == "create":
        r.create(args.id, args.bundle, args.pid_file, args.console_socket, args.preserve_fds)
    elif verb == "run":
        code = r.run(args.id, args.bundle, args.pid_file, args.console_socket, args.preserve_fds, args.detach)
        return code
    elif verb == "start":
        r.start(args.id)
    elif verb == "state":
        print(json.dumps(r.get(args.id).oci_state(), indent=2))
    elif verb == "kill":
        r.kill(args.id, rt.parse_signal(args.signal), args.all)
    elif verb == "delete":
        r.delete(args.id, args.force)
    elif verb == "exec":
        process = _exec_process(r, args)
        try:
            return r.exec(args.id, process, args.pid_file, args.console_socket, args.detach, args.preserve_fds)
        except rt.ExecFailed as e:
            log.error(str(e))
            return e.code
    elif verb == "ps":
        print(_ps(r.pids(args.id), args.format))
    elif verb == "list":
        out = _list(r.list(), args.format, args.quiet)
        if out:
            print(out)
    elif verb in ("pause", "resume"):
        getattr(r, verb)(args.id)
    elif verb == "update":
        r.update(args.id, _update_resources(args))
    elif verb == "features":
        print(json.dumps({**spec.features(), "hooks": list(hooks.KINDS)}, indent=2))
    elif verb == "spec":
        _spec(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    log = Log(None, "text", False)
    try:
        code = run(sys.argv[1:] if argv is None else argv, log)
    except (UsageError, RunnerError) as e:
        log.error(str(e))
        code = 1
    except OSError as e:  # a system call the runtime did not expect to fail: still one line
        log.error(f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}")
        code = 1
    sys.stdout.flush()
    return code
