"""config.json, the runtime-spec's container configuration: the one written for a strata container
(``for_container``: the image's settings and ``run``'s flags over Docker's defaults) and the checks
any config passes before a process is made (``check``: what this runtime cannot honour is refused in
one line, never ignored when ignoring it would weaken a fence).

The defaults are Docker's (moby ``daemon/pkg/oci/defaults.go`` and ``daemon/oci_linux.go``): the
mounts of /proc, /dev, /dev/pts, /dev/shm, /dev/mqueue and /sys, its capability set, masked and
read-only paths, the device allow-list and seccomp profile (``runner.devices``, ``runner.seccomp``).
strata's own additions ride in ``annotations`` (``io.strata.user``: a user name that the init looks
up in the container's /etc/passwd, as Docker's daemon does, since config.json wants numbers).
"""

from __future__ import annotations

from .. import devices, seccomp, userns
from ..errors import RunnerError
from . import privileges

TYPE_CHECKING = False
if TYPE_CHECKING:  # (``typing`` is ~10 ms of a strata-oci create's start-up)
    from typing import Any

OCI_VERSION = "1.2.0"
USER_ANNOTATION = "io.strata.user"
ROOT_SUID = "io.strata.root-suid"  # oci.rootfs.ROOT_SUID (not imported here: strata-oci's cheap verbs load spec)
INIT_ANNOTATION = "io.strata.init"  # --init: PID 1 is strata's reaper, the command its child
TTY_GID = 5  # devpts gives its ptys this group where it exists (``default_mounts``)

# Docker's default capability set (moby oci/caps/defaults.go)
DEFAULT_CAPS = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]
MASKED_PATHS = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
NAMESPACES = ("pid", "network", "ipc", "uts", "mount", "cgroup", "user")


def _mount(destination: str, kind: str, source: str, options: list[str]) -> dict[str, Any]:
    return {"destination": destination, "type": kind, "source": source, "options": options}


def default_mounts(host_network: bool = False, tty_group: bool = True, sys_rw: bool = False) -> list[dict[str, Any]]:
    """Docker's: proc, a tmpfs /dev with its own devpts, shm and mqueue, a read-only /sys (the host's,
    bound, when the container shares the host's network namespace: a new sysfs would show the wrong
    one; ``sys_rw``: writable, as a privileged container's). ``tty_group``: the devpts instance gives
    its ptys group 5 (not where gid 5 is unmapped)."""
    ro = [] if sys_rw else ["ro"]
    sys_mount = (
        _mount("/sys", "bind", "/sys", ["rbind", *ro, "nosuid", "nodev", "noexec"])
        if host_network
        else _mount("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", *ro])
    )
    return [
        _mount("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
        _mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        _mount(
            "/dev/pts",
            "devpts",
            "devpts",
            ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", *(["gid=5"] if tty_group else [])],
        ),
        sys_mount,
        _mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
        _mount("/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
    ]


_TMPFS_DEFAULTS = ["noexec", "nosuid", "nodev", "rprivate"]  # Docker's, under a tmpfs mount's own options
_PAIRS = {
    "exec": "noexec",
    "suid": "nosuid",
    "dev": "nodev",
    "rw": "ro",
    "async": "sync",
    "atime": "noatime",
    "diratime": "nodiratime",
    "relatime": "norelatime",
    "strictatime": "nostrictatime",
    "mand": "nomand",
}
_KIND = {**{k: k for k in _PAIRS}, **{v: k for k, v in _PAIRS.items()}}


def merge_tmpfs_options(options: list[str]) -> list[str]:
    """Docker's MergeTmpfsOptions: of two options of one kind (``exec`` and ``noexec``, two
    ``size=``), the later wins."""
    seen: set[str] = set()
    out = []
    for option in reversed(options):
        kind = option.partition("=")[0] if "=" in option else _KIND.get(option, option)
        if kind not in seen:
            seen.add(kind)
            out.append(option)
    return out[::-1]


def oci_mounts(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The mounts of a container's volumes, binds and tmpfs (its record's ``MountPoints`` and
    ``HostConfig.Tmpfs``: ``runner.volumemounts``), parents before children."""
    out = []
    for m in config.get("MountPoints") or []:
        if m["Type"] == "tmpfs":
            out.append(
                _mount(
                    m["Destination"],
                    "tmpfs",
                    "tmpfs",
                    merge_tmpfs_options(_TMPFS_DEFAULTS + list(m.get("Options") or [])),
                )
            )
        else:
            out.append(
                _mount(
                    m["Destination"],
                    "bind",
                    m["Source"],
                    [
                        "bind" if m.get("NonRecursive") else "rbind",
                        m.get("Propagation") or "rprivate",
                        *([] if m.get("RW", True) else ["ro"]),
                    ],
                )
            )
    for target, data in ((config.get("HostConfig") or {}).get("Tmpfs") or {}).items():
        options = _TMPFS_DEFAULTS + (data.split(",") if data else [])
        out.append(_mount(target, "tmpfs", "tmpfs", merge_tmpfs_options(options)))
    return by_depth(out)


def by_depth(mounts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Parents before children, in order otherwise (Docker's sortMounts): a volume on /etc goes
    under the /etc/hosts bound over it."""
    return sorted(mounts, key=lambda m: m["destination"].rstrip("/").count("/"))


def for_container(
    config: dict[str, Any],
    rootfs: str,
    etc_files: dict[str, str],
    rootless: tuple[int, int] | None = None,
    netns: str | None = None,
) -> dict[str, Any]:
    """The config.json of a strata container: ``config`` is its record (``runner.containers``),
    ``rootfs`` its union's mountpoint, ``etc_files`` the host files bound over /etc/hostname, hosts
    and resolv.conf. ``rootless``: the (uid, gid) of the ordinary user who runs it, which become root
    in a user namespace of its own (with the user's subordinate ids as 1..N: ``userns``); limits
    only in a delegated cgroup v2 subtree, no device list (the kernel keeps a user namespace away
    from host devices). ``netns``: a network namespace to join (``--network container:NAME``)."""
    cfg, hc = config["Config"], config["HostConfig"]
    host_network = hc["NetworkMode"] == "host"
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount", "cgroup")]
    if not host_network:
        namespaces.append({"type": "network", **({"path": netns} if netns else {})})
    privileged = bool(hc.get("Privileged"))
    host_devices = privileged and not rootless  # (rootless: the user namespace keeps host devices out)
    rules: list[devices.DeviceRule] = (
        [{"allow": True, "type": "a", "access": "rwm"}] if host_devices else config.get("DeviceRules", [])
    )
    resources: dict[str, Any] = {} if rootless else {"devices": devices.rules_with(rules)}
    # rootless, limits apply in a delegated cgroup v2 subtree (else the CLI has said they cannot)
    limits = not rootless or bool((config.get("Cgroup") or {}).get("Version"))
    if limits:
        resources.update(limit_resources(hc))
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "resources": resources,
        "devices": devices.host_devices() if host_devices else config.get("LinuxDevices", []),
        "maskedPaths": [] if privileged else list(MASKED_PATHS),
        "readonlyPaths": [] if privileged else list(READONLY_PATHS),
    }
    if rootless:
        namespaces.append({"type": "user"})
        linux["uidMappings"], linux["gidMappings"] = userns.mappings(*rootless)
    else:
        linux["cgroupsPath"] = f"strata/{config['Id']}"
    caps = privileges.of_container(config, DEFAULT_CAPS)
    profile = seccomp.load_profile(None) if config.get("Seccomp", "default") == "default" else config.get("Seccomp")
    if isinstance(profile, dict) and not privileged:  # (a privileged container runs unconfined, as Docker's)
        linux["seccomp"] = seccomp.resolve(profile, set(caps))
    read_only = bool(hc.get("ReadonlyRootfs"))  # --read-only: the root and /etc's files (volumes, tmpfs stay rw)
    own = oci_mounts(config)  # a volume, bind or tmpfs replaces a default mount of its destination, as Docker's
    taken = {m["destination"] for m in own}
    user = cfg["User"] or "0"
    annotations = {} if _numeric_user(user) else {USER_ANNOTATION: user}
    if hc.get("Init"):
        annotations[INIT_ANNOTATION] = "true"
    annotations[ROOT_SUID] = "true"  # setuid programs work, as in Docker (libfuse mounts the union nosuid)
    uid, _, gid = user.partition(":") if _numeric_user(user) else ("0", "", "0")
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": bool(cfg["Tty"]),
            "args": list(config["Command"]),
            "env": list(cfg["Env"]),
            "cwd": cfg["WorkingDir"] or "/",
            "user": {"uid": int(uid), "gid": int(gid or 0)},
            "capabilities": {k: list(caps) for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": privileges.no_new_privileges(hc.get("SecurityOpt")),
            **({"rlimits": rlimits(hc["Ulimits"])} if hc.get("Ulimits") else {}),
        },
        "root": {"path": rootfs, "readonly": read_only},
        "hostname": cfg["Hostname"],
        "mounts": [
            m
            for m in default_mounts(
                host_network,
                tty_group=userns.maps_id(linux.get("gidMappings") or [], TTY_GID) if rootless else True,
                sys_rw=privileged,
            )
            if m["destination"] not in taken
        ]
        + by_depth(
            [
                _mount(f"/etc/{name}", "bind", path, ["rbind", "rprivate", *(["ro"] if read_only else [])])
                for name, path in etc_files.items()
                if f"/etc/{name}" not in taken
            ]
            + own
        ),
        "linux": linux,
        "annotations": annotations,
    }


CFS_PERIOD = 100000  # microseconds: the period of a --cpus quota, as Docker's


def limit_resources(hc: dict[str, Any]) -> dict[str, Any]:
    """The runtime-spec's ``linux.resources`` (but devices) for a record's limits: ``-m`` with its
    swap (``--memory-swap``; default twice ``-m``), ``--cpu-shares``, ``--cpus`` (a CFS quota over
    Docker's 100 ms period), ``--cpuset-cpus``, ``--pids-limit``."""
    out: dict[str, Any] = {}
    if hc.get("Memory"):
        out["memory"] = {"limit": hc["Memory"], "swap": hc.get("MemorySwap") or 2 * hc["Memory"]}
    cpu: dict[str, Any] = {}
    if hc.get("CpuShares"):
        cpu["shares"] = hc["CpuShares"]
    if hc.get("NanoCpus"):
        cpu.update(quota=hc["NanoCpus"] * CFS_PERIOD // 10**9, period=CFS_PERIOD)
    if hc.get("CpusetCpus"):
        cpu["cpus"] = hc["CpusetCpus"]
    if cpu:
        out["cpu"] = cpu
    if (hc.get("PidsLimit") or 0) > 0:
        out["pids"] = {"limit": hc["PidsLimit"]}
    return out


RLIM_INFINITY = 2**64 - 1  # the runtime-spec's rlimits are uint64


def rlimits(ulimits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``--ulimit``s (Docker's ``{"Name", "Soft", "Hard"}``, -1 unlimited) as ``process.rlimits``."""
    return [
        {
            "type": f"RLIMIT_{u['Name'].upper()}",
            "soft": RLIM_INFINITY if u["Soft"] < 0 else u["Soft"],
            "hard": RLIM_INFINITY if u["Hard"] < 0 else u["Hard"],
        }
        for u in ulimits
    ]


def _numeric_user(user: str) -> bool:
    """``uid`` or ``uid:gid`` (numbers need no /etc/passwd; a user name does, and so does a lone uid,
    whose group and supplementary groups come from there)."""
    name, _, group = user.partition(":")
    return name.isdigit() and group.isdigit()


SUPPORTED = {
    "": {"ociVersion", "process", "root", "hostname", "mounts", "linux", "annotations"},
    "process": {
        "terminal",
        "consoleSize",
        "args",
        "env",
        "cwd",
        "user",
        "capabilities",
        "noNewPrivileges",
        "rlimits",
        "oomScoreAdj",
    },
    "linux": {
        "namespaces",
        "resources",
        "devices",
        "maskedPaths",
        "readonlyPaths",
        "cgroupsPath",
        "seccomp",
        "rootfsPropagation",
        "sysctl",
        "uidMappings",
        "gidMappings",
    },
}


def check(config: dict[str, Any]) -> None:
    """Refuse, in one line, what this runtime would not honour: unknown fields where ignoring them
    could weaken a fence, a namespace type it does not make, a process with no args."""
    if not isinstance(config, dict):
        raise RunnerError("config.json: not a JSON object")
    for section, known in SUPPORTED.items():
        value = config.get(section, {}) if section else config
        if not isinstance(value, dict):
            raise RunnerError(f"config.json: {section} must be an object")
        unknown = sorted(set(value) - known)
        if unknown:
            where = f"{section}." if section else ""
            raise RunnerError(f"config.json: {where}{unknown[0]} is not supported by strata")
    process = config.get("process") or {}
    if not process.get("args"):
        raise RunnerError("config.json: process.args must name a command")
    if not (config.get("root") or {}).get("path"):
        raise RunnerError("config.json: root.path is required")
    for ns in (config.get("linux") or {}).get("namespaces", []):
        if ns.get("type") not in NAMESPACES:
            raise RunnerError(f"config.json: unknown namespace type {ns.get('type')!r}")
    _check_nested(config)


# fields below the top sections that strata honours; any other field with a value is refused
NESTED = {
    ("process", "user"): {"uid", "gid", "additionalGids", "umask", "username"},
    ("linux", "resources"): {"devices", "memory", "cpu", "pids"},
    ("linux", "resources", "memory"): {"limit", "swap"},
    ("linux", "resources", "cpu"): {"shares", "quota", "period", "cpus"},
    ("linux", "resources", "pids"): {"limit"},
    ("root",): {"path", "readonly"},
}
RLIMITS = {
    "RLIMIT_AS",
    "RLIMIT_CORE",
    "RLIMIT_CPU",
    "RLIMIT_DATA",
    "RLIMIT_FSIZE",
    "RLIMIT_LOCKS",
    "RLIMIT_MEMLOCK",
    "RLIMIT_MSGQUEUE",
    "RLIMIT_NICE",
    "RLIMIT_NOFILE",
    "RLIMIT_NPROC",
    "RLIMIT_RSS",
    "RLIMIT_RTPRIO",
    "RLIMIT_RTTIME",
    "RLIMIT_SIGPENDING",
    "RLIMIT_STACK",
}


def _check_nested(config: dict[str, Any]) -> None:
    for path, known in NESTED.items():
        value: Any = config
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            continue
        if not isinstance(value, dict):
            raise RunnerError(f"config.json: {'.'.join(path)} must be an object")
        for key in sorted(set(value) - known):
            if value[key] not in (None, "", 0, [], {}):  # an empty field asks for nothing
                raise RunnerError(f"config.json: {'.'.join(path)}.{key} is not supported by strata")
    for limit in (config.get("process") or {}).get("rlimits") or []:
        if not isinstance(limit, dict) or limit.get("type") not in RLIMITS:
            raise RunnerError(
                f"config.json: process.rlimits: unknown type {limit.get('type') if isinstance(limit, dict) else limit!r}"
            )


def default_config(rootless: bool = False) -> dict[str, Any]:
    """``strata-oci spec``: runc's example config (a shell on a terminal in ``rootfs``, three
    capabilities, a read-only root), with strata's default mounts; ``rootless`` adds a user
    namespace mapping the caller's ids to root."""
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    namespaces = [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")]
    linux: dict[str, Any] = {
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "namespaces": namespaces,
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
    }
    if rootless:
        import os

        namespaces.append({"type": "user"})
        linux["uidMappings"] = [{"containerID": 0, "hostID": os.getuid(), "size": 1}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": os.getgid(), "size": 1}]
        del linux["resources"]
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": True,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {k: list(caps) for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "strata",
        "mounts": default_mounts(tty_group=not rootless),
        "linux": linux,
    }


def features() -> dict[str, Any]:
    """``strata-oci features``: the runtime-spec's features document (``features.md``): what a
    config may ask of this runtime."""
    from . import rootfs

    caps = sorted(privileges.NAMES)
    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": [],
        "mountOptions": sorted(rootfs.mount_options()),
        "linux": {
            "namespaces": sorted(NAMESPACES),
            "capabilities": caps,
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False, "rdma": False},
            "seccomp": {
                "enabled": True,
                "actions": sorted(seccomp.ACTIONS),
                "operators": sorted(seccomp.OPS),
                "archs": sorted(set(seccomp._NATIVE_TO_SCMP.values())),
                "knownFlags": sorted(seccomp._FLAG_ATTRS),
                "supportedFlags": sorted(seccomp._FLAG_ATTRS),
            },
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": False}},
        },
        "annotations": {"io.strata.runtime": "strata-oci"},
    }
