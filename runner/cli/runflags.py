"""``run``'s and ``create``'s flags for what the process is and may do, its limits, its names and its
life: ``--entrypoint``, ``--env-file``, ``--init``, ``--cap-add``/``--cap-drop``, ``--privileged``,
``--pids-limit``, ``--cpus``, ``--cpuset-cpus``, ``--memory-swap``, ``--ulimit``, ``--add-host``,
``--dns``, ``--stop-signal``, ``--stop-timeout``, ``--restart``, ``--detach-keys``; turned into the
record's fields under Docker's names (``HostConfig.CapAdd``, ``NanoCpus``, ``RestartPolicy``...).

Errors as Docker gives them: what its CLI refuses while parsing a flag (``--cpus abc``, a bad
``--ulimit``) is a usage error with a hint; what its daemon refuses (an unknown capability, more
CPUs than there are) one ``Error:`` line. Nothing is created here.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
from fractions import Fraction
from typing import Any

from ..errors import RunnerError
from ..oci import privileges
from ..signals import parse_signal
from .errors import UsageError
from .parsing import FlagValueError, int64
from .units import ram_in_bytes

ULIMITS = (
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
)  # go-units' names ("as" is left out there too)
RESTART_POLICIES = ("no", "always", "on-failure", "unless-stopped")
DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"
CFS_PERIOD = 100000  # microseconds: Docker's period for --cpus
_CTRL = {
    **{chr(c): c - ord("a") + 1 for c in range(ord("a"), ord("z") + 1)},
    "@": 0,
    "[": 27,
    "\\": 28,
    "]": 29,
    "^": 30,
    "_": 31,
}


# -- flag types (Docker's CLI checks these while parsing) ------------------------------------------
def cpus(value: str) -> int:
    """``--cpus``: a rational number of CPUs -> NanoCPUs (Docker's ParseCPUs: exact, or refused)."""
    try:
        number = Fraction(value.strip())
    except (ValueError, ZeroDivisionError):
        raise FlagValueError(value, f"failed to parse {value} as a rational number") from None
    nano = number * 10**9
    if nano.denominator != 1:
        raise FlagValueError(value, "value is too precise")
    return int(nano)


def memory_swap(value: str) -> int:
    """``--memory-swap``: a size as ``-m`` takes it, or -1 (unlimited swap)."""
    if value == "-1":
        return -1
    try:
        return ram_in_bytes(value)
    except UsageError as e:
        raise FlagValueError(value, str(e)) from None


def ulimit(value: str) -> dict[str, Any]:
    """``--ulimit NAME=SOFT[:HARD]`` (go-units ParseUlimit): ``infinity`` is -1; no hard: the soft."""
    name, sep, limits = value.partition("=")
    if not sep:
        raise FlagValueError(value, f"invalid ulimit argument: {value}")
    if name not in ULIMITS:
        raise FlagValueError(value, f"invalid ulimit type: {name}")
    parts = limits.split(":")
    if len(parts) > 2:
        raise FlagValueError(
            value, f"too many limit value arguments - {limits}, can only have up to two, `soft[:hard]`"
        )
    numbers = []
    for part in parts:
        if part == "infinity":
            numbers.append(-1)
        elif re.fullmatch(r"[+-]?[0-9]{1,19}", part):
            numbers.append(int(part))
        else:
            raise FlagValueError(value, f"strconv.ParseInt: parsing {part!r}: invalid syntax".replace("'", '"'))
    soft, hard = numbers[0], numbers[-1]
    if hard != -1 and soft == -1:
        raise FlagValueError(
            value, f"ulimit soft limit must be less than or equal to hard limit: soft: -1 (unlimited), hard: {hard}"
        )
    if hard != -1 and soft > hard:
        raise FlagValueError(value, f"ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}")
    return {"Name": name, "Hard": hard, "Soft": soft}


def _ip(value: str) -> str:
    """An IP address, in its normal form (Docker's ValidateIPAddress)."""
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise FlagValueError(value, f"IP address is not correctly formatted: {value}") from None


def extra_host(value: str) -> str:
    """``--add-host NAME:IP`` (or ``NAME=IP``, Docker >= 25; ``host-gateway`` for the host as the
    container reaches it), kept as ``NAME:IP``."""
    sep = "=" if "=" in value else ":"
    name, found, address = value.partition(sep)
    if not found or not name:
        raise FlagValueError(value, f"bad format for add-host: {quoted(value)}")
    if address != "host-gateway":
        try:
            address = str(ipaddress.ip_address(address.strip().strip("[]")))
        except ValueError:
            raise FlagValueError(value, f"invalid IP address in add-host: {quoted(address)}") from None
    return f"{name}:{address}"


def dns(value: str) -> str:
    return _ip(value)


def quoted(text: str) -> str:
    from .format import quoted as go_quoted

    return go_quoted(text)


def detach_keys(value: str) -> bytes:
    """Docker's detach-key grammar (``ctrl-p,ctrl-q``, ``ctrl-@``, ``a``): the bytes to watch for.
    ``RunnerError`` in Docker's words for anything else."""
    out = bytearray()
    for key in value.split(","):
        lowered = key.lower()
        if len(key) == 1:
            out.append(ord(key))
        elif lowered.startswith("ctrl-") and len(key) == 6 and lowered[5] in _CTRL:
            out.append(_CTRL[lowered[5]])
        else:
            raise RunnerError(f"Invalid detach keys ({value}) provided")
    if not out:
        raise RunnerError(f"Invalid detach keys ({value}) provided")
    return bytes(out)


def restart_policy(value: str) -> dict[str, Any]:
    """``--restart no|always|unless-stopped|on-failure[:N]`` -> ``RestartPolicy``, checked as Docker's
    CLI (the format) and daemon (the name and count) check it."""
    name, sep, count = value.partition(":")
    if sep and not name:
        raise RunnerError("invalid restart policy format: no policy provided before colon")
    retries = 0
    if count:
        if not re.fullmatch(r"[+-]?[0-9]{1,9}", count):
            raise RunnerError("invalid restart policy format: maximum retry count must be an integer")
        retries = int(count)
    if name not in RESTART_POLICIES:
        raise RunnerError(
            f"invalid restart policy: unknown policy '{name}'; use one of 'no', 'always', "
            "'on-failure', or 'unless-stopped'"
        )
    if name != "on-failure" and retries:
        raise RunnerError(
            "invalid restart policy: maximum retry count can only be used with 'on-failure'"
            + (" and cannot be negative" if retries < 0 else "")
        )
    if retries < 0:
        raise RunnerError("invalid restart policy: maximum retry count cannot be negative")
    return {"Name": name, "MaximumRetryCount": retries}


# -- reading the flags --------------------------------------------------------------------------------
def env_file_entries(paths: list[str]) -> list[str]:
    """Docker's env files: ``NAME=VALUE`` lines taken as they are (the value untrimmed), ``NAME``
    alone taken from this environment (left out when unset here), blank lines and ``#`` comments
    skipped, a UTF-8 BOM dropped."""
    out: list[str] = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise UsageError(f"open {path}: {(e.strerror or str(e)).lower()}") from None
        for number, data in enumerate(raw.split(b"\n"), 1):
            if number == 1:
                data = data.removeprefix(b"\xef\xbb\xbf")
            try:
                line = data.decode().rstrip("\r").lstrip()
            except UnicodeDecodeError:
                raise UsageError(f"env file {path} contains invalid utf8 bytes at line {number}") from None
            if not line or line.startswith("#"):
                continue
            name, sep, value = line.partition("=")
            name = name.lstrip(" \t")
            if not name:
                raise UsageError(f"poorly formatted environment: no variable name on line '{line}'")
            if any(c in name for c in " \t"):
                raise UsageError(f"poorly formatted environment: variable '{name}' contains whitespaces")
            if sep:
                out.append(f"{name}={value}")
            elif line.strip() in os.environ:
                out.append(f"{line.strip()}={os.environ[line.strip()]}")
        # (a NAME unset here is left out, as -e NAME is)
    return out


def command(args: argparse.Namespace, settings: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(entrypoint, cmd): ``--entrypoint`` replaces the image's, and then the image's CMD is not
    used either (Docker's rule); ``--entrypoint ""`` clears it."""
    if args.entrypoint is not None:
        return ([args.entrypoint] if args.entrypoint else []), list(args.command or [])
    return list(settings.get("Entrypoint") or []), list(args.command or settings.get("Cmd") or [])


def _cpu_list(text: str) -> set[int]:
    """A cpuset list (``0-2,4``) as the set of CPUs it names; ValueError if it is not one."""
    out: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"([0-9]{1,5})(?:-([0-9]{1,5}))?", part)
        if not m:
            raise ValueError(part)
        low, high = int(m[1]), int(m[2] or m[1])
        if high < low:
            raise ValueError(part)
        out.update(range(low, high + 1))
    return out


def _online_cpus() -> set[int]:
    return set(os.sched_getaffinity(0))


def _spans(cpus: set[int]) -> str:
    """``{0, 1, 2, 4}`` -> ``0-2,4``."""
    out, ordered = [], sorted(cpus)
    start = prev = ordered[0] if ordered else 0
    for cpu in ordered[1:] + [None]:
        if cpu is not None and cpu == prev + 1:
            prev = cpu
            continue
        out.append(f"{start}-{prev}" if prev != start else str(start))
        if cpu is not None:
            start = prev = cpu
    return ",".join(out)


def plan(args: argparse.Namespace, settings: dict[str, Any], memory: int, cgroup_version: int) -> dict[str, Any]:
    """The record's fields for these flags: ``{"Config": {...}, "HostConfig": {...}}``, merged over
    the rest of ``run``'s. ``memory``: ``-m`` as in force; ``cgroup_version`` 0: no cgroup to limit
    with (rootless without delegation), where limits are dropped with one warning, as podman's."""
    add = privileges.normalize(args.cap_add or [])
    drop = privileges.normalize(args.cap_drop or [])
    restart = restart_policy(args.restart)
    if args.rm and restart["Name"] != "no":
        raise RunnerError("Conflicting options: --restart and --rm")
    if args.detach_keys is not None:
        detach_keys(args.detach_keys)
    stop_signal = args.stop_signal or settings.get("StopSignal")
    if stop_signal:
        parse_signal(stop_signal)
    nano = args.cpus or 0
    ncpu = len(_online_cpus())
    if nano < 0 or nano > ncpu * 10**9 or 0 < nano < 10**7:
        raise RunnerError(f"Range of CPUs is from 0.01 to {ncpu}.00, as there are only {ncpu} CPUs available")
    cpuset = args.cpuset_cpus or ""
    if cpuset:
        try:
            wanted = _cpu_list(cpuset)
        except ValueError:
            raise RunnerError(f"Invalid value {cpuset} for cpuset cpus") from None
        if not wanted <= _online_cpus():
            raise RunnerError(
                f"Requested CPUs are not available - requested {cpuset}, available: {_spans(_online_cpus())}"
            )
    swap = args.memory_swap or 0
    if swap > 0 and not memory:
        raise RunnerError("You should always set the Memory limit when using Memoryswap limit, see usage")
    if swap > 0 and swap < memory:
        raise RunnerError("Minimum memoryswap limit should be larger than memory limit, see usage")
    pids = args.pids_limit or 0
    if cgroup_version == 0 and (nano or cpuset or pids > 0 or swap > 0):  # (-m and --cpu-shares: run's own warning)
        print(
            "WARNING: no cgroup is delegated to you: --cpus, --cpuset-cpus, --pids-limit and --memory-swap are "
            "not enforced",
            file=sys.stderr,
        )
        nano, cpuset, pids, swap = 0, "", 0, 0
    if swap > 0 and cgroup_version == 1 and not os.path.exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"):
        print(
            "WARNING: Your kernel does not support swap limit capabilities or the cgroup is not mounted. Memory "
            "limited without swap.",
            file=sys.stderr,
        )
        swap = -1
    config: dict[str, Any] = {}
    if stop_signal:
        config["StopSignal"] = stop_signal
    if args.stop_timeout is not None:
        config["StopTimeout"] = args.stop_timeout
    host: dict[str, Any] = {
        "CapAdd": add or None,
        "CapDrop": drop or None,
        "Privileged": bool(args.privileged),
        "Init": True if args.init else None,
        "PidsLimit": pids if pids else None,
        "NanoCpus": nano,
        "CpusetCpus": cpuset,
        "Ulimits": list(args.ulimit or []) or None,
        "ExtraHosts": list(args.add_host or []) or None,
        "Dns": list(args.dns or []),
        "RestartPolicy": restart,
    }
    if swap:
        host["MemorySwap"] = swap
    return {"Config": config, "HostConfig": host}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--entrypoint",
        metavar="CMD",
        help="run CMD instead of the image's ENTRYPOINT (then its CMD is not used either); '' clears it",
    )
    p.add_argument(
        "--env-file",
        action="append",
        dest="env_file",
        metavar="FILE",
        help="read environment variables from FILE (NAME=VALUE lines, # comments), before -e; repeatable",
    )
    p.add_argument(
        "--init",
        action="store_true",
        help="an init as PID 1 that reaps orphans and forwards signals to the command (strata's own)",
    )
    p.add_argument(
        "--cap-add",
        action="append",
        dest="cap_add",
        metavar="CAP",
        help="add a Linux capability (NET_ADMIN, SYS_PTRACE... or ALL); repeatable",
    )
    p.add_argument(
        "--cap-drop",
        action="append",
        dest="cap_drop",
        metavar="CAP",
        help="drop a Linux capability (CHOWN... or ALL); repeatable",
    )
    p.add_argument(
        "--privileged",
        action="store_true",
        help="every capability, no seccomp filter, no masked paths, a writable /sys and (root) every host device",
    )
    p.add_argument(
        "--pids-limit",
        type=int64,
        dest="pids_limit",
        metavar="N",
        help="at most N processes and threads (-1 or 0: no limit, the default)",
    )
    p.add_argument("--cpus", type=cpus, metavar="N", help="at most N CPUs' worth of time (1.5...: a CFS quota)")
    p.add_argument("--cpuset-cpus", dest="cpuset_cpus", metavar="LIST", help="run only on these CPUs (0-3, 0,1)")
    p.add_argument(
        "--memory-swap",
        type=memory_swap,
        dest="memory_swap",
        metavar="SIZE",
        help="memory plus swap (with -m; -1: unlimited swap; default: twice -m)",
    )
    p.add_argument(
        "--ulimit",
        action="append",
        type=ulimit,
        metavar="NAME=SOFT[:HARD]",
        help="a resource limit, as nofile=1024:2048 (infinity: none); repeatable",
    )
    p.add_argument(
        "--add-host",
        action="append",
        type=extra_host,
        dest="add_host",
        metavar="NAME:IP",
        help="add a line to /etc/hosts (IP host-gateway: the host); repeatable",
    )
    p.add_argument(
        "--dns",
        action="append",
        type=dns,
        metavar="IP",
        help="a nameserver for /etc/resolv.conf, instead of the host's; repeatable",
    )
    p.add_argument(
        "--stop-signal",
        dest="stop_signal",
        metavar="SIGNAL",
        help="the signal stop sends first (default: the image's STOPSIGNAL, else SIGTERM)",
    )
    p.add_argument(
        "--stop-timeout",
        type=int64,
        dest="stop_timeout",
        metavar="SECONDS",
        help="seconds stop waits before SIGKILL (default 10; -1: forever)",
    )
    p.add_argument(
        "--restart",
        default="no",
        metavar="POLICY",
        help="no, on-failure[:N], always or unless-stopped: started again by its supervisor when it "
        "ends (not after a reboot of the host; default no)",
    )
    p.add_argument(
        "--detach-keys",
        dest="detach_keys",
        metavar="KEYS",
        help=f"the keys that leave a -it container running (default {DEFAULT_DETACH_KEYS})",
    )
