"""``run``'s storage flags as Docker reads them: ``-v/--volume``, ``--mount``, ``--tmpfs``,
``--volumes-from`` and ``--read-only``, with the image's ``VOLUME`` entries, into the container's
mount points (its record's ``MountPoints``, what ``inspect`` shows as ``Mounts``) and Docker's
``HostConfig`` fields. Nothing is made here: the volumes are made with the container's record
(``runner.volumemounts``).

Errors as Docker gives them: what its CLI refuses (a ``--mount`` field, ``-v`` with too many colons)
is a usage error (``strata: ...`` and a hint); what its daemon refuses (a relative path, a bind
source that does not exist, a mount point given twice) one ``Error:`` line.

The order is Docker's (``registerMountPoints``): ``--volumes-from`` first, then ``-v`` and
``--mount`` over them (given twice between these two: refused), then an anonymous volume for each
``-v /path`` and image ``VOLUME`` not mounted yet. ``--tmpfs`` mounts are kept apart, in
``HostConfig.Tmpfs``, and do not show in ``Mounts`` (as Docker's do not).
"""

from __future__ import annotations

import argparse
import csv
import os
import posixpath
from dataclasses import dataclass, field
from typing import Any

from ..containers import Containers
from ..errors import RunnerError
from ..volumes import ANONYMOUS, DRIVER, Volumes, anonymous_name, check_name
from .errors import ParseError, UsageError
from .format import quoted
from .parsing import FlagValueError
from .units import ram_in_bytes

PROPAGATIONS = ("private", "rprivate", "shared", "rshared", "slave", "rslave")
_MODE_GROUPS = (("rw", "ro"), ("z", "Z"), PROPAGATIONS, ("nocopy",), ("consistent", "cached", "delegated"))
_TMPFS_DATA = ("", "size", "mode", "uid", "gid", "nr_inodes", "nr_blocks", "mpol")
_TMPFS_FLAGS = (
    "ro",
    "rw",
    "exec",
    "noexec",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "sync",
    "async",
    "dirsync",
    "atime",
    "noatime",
    "diratime",
    "nodiratime",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "mand",
    "nomand",
    "remount",
    "bind",
    "rbind",
    "unbindable",
    "runbindable",
    "private",
    "rprivate",
    "shared",
    "rshared",
    "slave",
    "rslave",
)
_TRUE, _FALSE = ("1", "t", "T", "TRUE", "true", "True"), ("0", "f", "F", "FALSE", "false", "False")


@dataclass
class Storage:
    """What the storage flags make of a container: its mount points, and Docker's fields."""

    mounts: list[dict[str, Any]] = field(default_factory=list)  # the record's MountPoints
    host_config: dict[str, Any] = field(default_factory=dict)  # Binds, Mounts, Tmpfs, ReadonlyRootfs, VolumesFrom
    volumes: dict[str, Any] = field(default_factory=dict)  # Config.Volumes


def _bool(value: str) -> bool | None:
    """Go's strconv.ParseBool, None for anything else."""
    return True if value in _TRUE else False if value in _FALSE else None


def valid_mode(mode: str) -> bool:
    """Docker's mode grammar for ``-v`` (comma-separated, at most one of each kind)."""
    if not mode:
        return True
    counts = [0] * len(_MODE_GROUPS)
    for word in mode.split(","):
        kinds = [i for i, group in enumerate(_MODE_GROUPS) if word in group]
        if not kinds:
            return False
        counts[kinds[0]] += 1
    return max(counts) <= 1


def _target(spec_error: str, kind: str, target: str) -> str:
    """A mount's destination, cleaned; Docker's errors for a relative one or ``/``."""
    if not target.startswith("/"):
        raise RunnerError(
            f"{spec_error}invalid mount config for type \"{kind}\": invalid mount path: '{target}' "
            "mount path must be absolute"
        )
    cleaned = posixpath.normpath(target)
    cleaned = "/" + cleaned.lstrip("/")
    if cleaned == "/":
        raise RunnerError(
            f"{spec_error}invalid mount config for type \"{kind}\": invalid specification: destination can't be '/'"
        )
    return cleaned


def _volume_point(
    root: str, name: str | None, target: str, mode: str, rw: bool, copy: bool, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    anonymous = name is None
    name = name or anonymous_name()
    labels = {ANONYMOUS: ""} if anonymous else dict(labels or {})
    return {
        "Type": "volume",
        "Name": name,
        "Source": os.path.join(Volumes(root).path(name), "_data"),
        "Destination": target,
        "Driver": DRIVER,
        "Mode": mode,
        "RW": rw,
        "Propagation": "",
        "Anonymous": anonymous,
        "CopyData": copy,
        "Labels": labels,
    }


# -- -v/--volume ---------------------------------------------------------------------------------
def split_volume(spec: str) -> tuple[str | None, str, str]:
    """(source or None, target, mode) of a ``-v`` value, as Docker's CLI splits it (a source
    starting with ``.`` is made absolute, as its CLI does)."""
    if not spec:
        raise ParseError("invalid empty volume spec", "See 'strata run --help'.")
    parts = spec.split(":")
    if len(parts) > 3:
        raise ParseError(f"invalid spec: {spec}: too many colons", "See 'strata run --help'.")
    if "" in parts:
        raise ParseError(f"invalid spec: {spec}: empty section between colons", "See 'strata run --help'.")
    if len(parts) == 1:
        return None, parts[0], ""
    source = os.path.abspath(parts[0]) if parts[0].startswith(".") else parts[0]
    return source, parts[1], parts[2] if len(parts) == 3 else ""


def _bind_or_volume(root: str, spec: str) -> tuple[dict[str, Any], str]:
    """The mount point of a ``-v SOURCE:TARGET[:MODE]``, and the ``Binds`` entry it is recorded as."""
    source, target, mode = split_volume(spec)
    assert source is not None
    if len(spec.split(":")) == 2 and valid_mode(target):  # "/data:ro": a mode where the target goes
        raise RunnerError(f"invalid volume specification: '{spec}'")
    if not valid_mode(mode):
        raise RunnerError(f"invalid mode: {mode}")
    words = mode.split(",") if mode else []
    kind = "bind" if source.startswith("/") else "volume"
    where = f"invalid volume specification: '{spec}': "
    target = _target(where, kind, target)
    rw = "ro" not in words
    propagation = next((w for w in words if w in PROPAGATIONS), "")
    bind = f"{source}:{spec.split(':', 1)[1]}"
    if kind == "bind":
        if "nocopy" in words:
            raise RunnerError(f'{where}invalid mount config for type "bind": field VolumeOptions must not be specified')
        return {
            "Type": "bind",
            "Source": posixpath.normpath(source),
            "Destination": target,
            "Mode": mode,
            "RW": rw,
            "Propagation": propagation or "rprivate",
            "Create": True,
        }, bind
    if propagation:
        raise RunnerError(f'{where}invalid mount config for type "volume": field BindOptions must not be specified')
    check_name(source)
    return _volume_point(root, source, target, mode or "z", rw, "nocopy" not in words), bind


# -- --mount -------------------------------------------------------------------------------------
def mount_flag(value: str) -> dict[str, Any]:
    """A ``--mount`` value as Docker's CLI reads it (a ``type=`` for argparse): ``HostConfig.Mounts``'
    shape. Its grammar errors are the flag's (``invalid argument ... for "--mount" flag: ...``)."""
    try:
        fields = next(csv.reader([value]), [])
    except csv.Error as e:
        raise FlagValueError(value, str(e)) from None
    m: dict[str, Any] = {"Type": "volume"}

    def options(key: str) -> dict[str, Any]:
        section: dict[str, Any] = m.setdefault(key, {})
        return section

    for item in fields:
        key, sep, val = item.partition("=")
        key = key.lower()
        if not sep:
            if key not in ("readonly", "ro", "volume-nocopy", "bind-nonrecursive"):
                raise FlagValueError(value, f"invalid field '{item}' must be a key=value pair")
            val = "true"
        if key == "type":
            m["Type"] = val.lower()
        elif key in ("source", "src"):
            m["Source"] = os.path.abspath(val) if val == "." or val.startswith("./") else val
        elif key in ("target", "dst", "destination"):
            m["Target"] = val
        elif key in ("readonly", "ro", "volume-nocopy", "bind-nonrecursive"):
            flag = _bool(val)
            if flag is None:
                raise FlagValueError(value, f"invalid value for {key}: {val}")
            if key == "volume-nocopy":
                options("VolumeOptions")["NoCopy"] = flag
            elif key == "bind-nonrecursive":
                options("BindOptions")["NonRecursive"] = flag
            else:
                m["ReadOnly"] = flag
        elif key == "consistency":
            m["Consistency"] = val.lower()
        elif key == "bind-propagation":
            options("BindOptions")["Propagation"] = val.lower()
        elif key == "volume-label":
            label, _, text = val.partition("=")
            options("VolumeOptions").setdefault("Labels", {})[label] = text
        elif key == "volume-driver":
            options("VolumeOptions")["DriverConfig"] = {"Name": val}
        elif key == "volume-opt":
            options("VolumeOptions").setdefault("DriverConfig", {"Name": DRIVER}).setdefault("Options", {})[
                val.partition("=")[0]
            ] = val.partition("=")[2]
        elif key == "tmpfs-size":
            try:
                options("TmpfsOptions")["SizeBytes"] = ram_in_bytes(val)
            except UsageError:
                raise FlagValueError(value, f"invalid value for {key}: {val}") from None
        elif key == "tmpfs-mode":
            try:
                options("TmpfsOptions")["Mode"] = int(val, 8)
            except ValueError:
                raise FlagValueError(value, f"invalid value for {key}: {val}") from None
        else:
            raise FlagValueError(value, f"unexpected key '{key}' in '{item}'")
    if not m["Type"]:
        raise FlagValueError(value, "type is required")
    if not m.get("Target"):
        raise FlagValueError(value, "target is required")
    for prefix, key, kind in (
        ("volume", "VolumeOptions", "volume"),
        ("bind", "BindOptions", "bind"),
        ("tmpfs", "TmpfsOptions", "tmpfs"),
    ):
        if key in m and m["Type"] != kind:
            raise FlagValueError(value, f"cannot mix '{prefix}-*' options with mount type '{m['Type']}'")
    return m


def _mount_point(root: str, m: dict[str, Any]) -> dict[str, Any]:
    """The mount point of a parsed ``--mount``, checked as Docker's daemon checks it."""
    kind, source = m["Type"], m.get("Source", "")
    config = f'invalid mount config for type "{kind}": '
    if kind not in ("bind", "volume", "tmpfs"):
        raise RunnerError(f"{config}mount type unknown")
    target = _target("", kind, m["Target"])
    rw = not m.get("ReadOnly")
    if kind == "bind":
        bind = m.get("BindOptions") or {}
        if not source:
            raise RunnerError(f"{config}field Source must not be empty")
        if not source.startswith("/"):
            raise RunnerError(f"{config}invalid mount path: '{source}' mount path must be absolute")
        if not os.path.exists(source):
            raise RunnerError(f"{config}bind source path does not exist: {source}")
        propagation = bind.get("Propagation") or "rprivate"
        if propagation not in PROPAGATIONS:
            raise RunnerError(f"{config}invalid propagation mode: {propagation}")
        return {
            "Type": "bind",
            "Source": posixpath.normpath(source),
            "Destination": target,
            "Mode": "",
            "RW": rw,
            "Propagation": propagation,
            "NonRecursive": bool(bind.get("NonRecursive")),
        }
    if kind == "tmpfs":
        if source:
            raise RunnerError(f"{config}field Source must not be specified")
        tmpfs = m.get("TmpfsOptions") or {}
        options = [
            *([f"size={tmpfs['SizeBytes'] // 1024}k"] if tmpfs.get("SizeBytes") else []),
            *([f"mode={tmpfs['Mode']:o}"] if tmpfs.get("Mode") else []),
            *([] if rw else ["ro"]),
        ]
        return {
            "Type": "tmpfs",
            "Source": "",
            "Destination": target,
            "Mode": "",
            "RW": rw,
            "Propagation": "",
            "Options": options,
        }
    volume = m.get("VolumeOptions") or {}
    driver = volume.get("DriverConfig") or {}
    name = driver.get("Name") or DRIVER
    if name != DRIVER:
        raise RunnerError(f'error looking up volume plugin {name}: plugin "{name}" not found')
    if driver.get("Options"):
        raise RunnerError(f"{config}volume options (volume-opt) are not supported by strata's local volumes")
    if source:
        check_name(source)
    return _volume_point(
        root, source or None, target, "z" if source else "", rw, not volume.get("NoCopy"), volume.get("Labels")
    )


# -- --tmpfs, --volumes-from ----------------------------------------------------------------------
def _tmpfs(spec: str) -> tuple[str, str]:
    target, _, options = spec.partition(":")
    target = _target("", "tmpfs", target)
    for option in options.split(",") if options else []:
        if option in _TMPFS_FLAGS:
            continue
        if option.partition("=")[0] not in _TMPFS_DATA:  # Go's %q of the option split at its "="
            raise RunnerError(f"Invalid tmpfs option [{' '.join(quoted(p) for p in option.split('=', 1))}]")
    return target, options


def _volumes_from(root: str, spec: str) -> list[dict[str, Any]]:
    """The volume and bind mount points of another container, read-only if it says ``:ro`` or the
    mount was (Docker's ``ParseVolumesFrom``)."""
    if not spec:
        raise RunnerError("volumes-from specification cannot be an empty string")
    ref, _, mode = spec.partition(":")
    words = mode.split(",") if mode else []
    if mode and not valid_mode(mode):
        raise RunnerError(f"invalid mode: {mode}")
    if any(w in PROPAGATIONS for w in words):
        raise RunnerError(
            f'invalid argument: "{mode}". Propagation can\'t be specified while importing volumes from data container'
        )
    if "nocopy" in words:
        raise RunnerError(
            f'invalid argument: "{mode}". Copy modes can\'t be specified while importing volumes from data container'
        )
    source = Containers(root).get(ref)
    out = []
    for m in source.config.get("MountPoints") or []:
        if m.get("Type") in ("volume", "bind"):
            out.append(
                {**m, "RW": bool(m.get("RW")) and "ro" not in words, "Mode": "", "CopyData": False, "Create": False}
            )
    return out


def plan(root: str, args: argparse.Namespace, image_volumes: dict[str, Any] | None) -> Storage:
    """The container's storage from ``run``'s flags and its image's ``VOLUME`` entries; nothing is
    made (the volumes of ``Storage.mounts`` are made with the record)."""
    points: dict[str, dict[str, Any]] = {}
    for spec in args.volumes_from or []:
        for m in _volumes_from(root, spec):
            points[m["Destination"]] = m
    tmpfs: dict[str, str] = {}
    for spec in args.tmpfs or []:
        target, options = _tmpfs(spec)
        tmpfs[target] = options
    binds, anonymous, given = [], [], set()

    def take(m: dict[str, Any]) -> None:
        if m["Destination"] in given or m["Destination"] in tmpfs:
            raise RunnerError(f"Duplicate mount point: {m['Destination']}")
        given.add(m["Destination"])
        points[m["Destination"]] = m

    for spec in args.volume or []:
        source, target, _ = split_volume(spec)
        if source is None:
            anonymous.append(_target(f"invalid volume specification: '{spec}': ", "volume", target))
            continue
        m, bind = _bind_or_volume(root, spec)
        take(m)
        binds.append(bind)
    for m in args.mount or []:
        take(_mount_point(root, m))
    volumes = {**(image_volumes or {}), **{target: {} for target in anonymous}}
    for target in sorted(volumes):
        cleaned = _target(f"invalid volume specification: '{target}': ", "volume", target)
        if cleaned not in points and cleaned not in tmpfs:
            points[cleaned] = _volume_point(root, None, cleaned, "", True, True)
    host_config = {
        "Binds": binds or None,
        "Mounts": list(args.mount or []) or None,
        "Tmpfs": tmpfs or None,
        "ReadonlyRootfs": bool(args.read_only),
        "VolumesFrom": list(args.volumes_from or []) or None,
    }
    return Storage(sorted(points.values(), key=lambda m: m["Destination"]), host_config, volumes or {})


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``run``'s storage flags, with Docker's names."""
    p.add_argument(
        "-v",
        "--volume",
        action="append",
        metavar="[SOURCE:]TARGET[:MODE]",
        help="bind a host path (absolute; made if missing), mount a named volume (made on first use), "
        "or with TARGET alone an anonymous volume; MODE: ro, rw, nocopy, a propagation; repeatable",
    )
    p.add_argument(
        "--mount",
        action="append",
        type=mount_flag,
        metavar="type=bind|volume|tmpfs,dst=PATH[,...]",
        help="a mount as key=value fields: src=, dst=, readonly, bind-propagation=, volume-nocopy, "
        "volume-label=, tmpfs-size=, tmpfs-mode= (a bind source must exist); repeatable",
    )
    p.add_argument(
        "--tmpfs",
        action="append",
        metavar="PATH[:OPTIONS]",
        help="mount a tmpfs (default noexec,nosuid,nodev; OPTIONS as size=64m,mode=1777,exec); repeatable",
    )
    p.add_argument(
        "--volumes-from",
        action="append",
        dest="volumes_from",
        metavar="CONTAINER[:ro|rw]",
        help="mount the volumes and binds of another container; repeatable",
    )
    p.add_argument(
        "--read-only",
        action="store_true",
        dest="read_only",
        help="mount the container's root read-only (volumes and tmpfs mounts stay writable)",
    )
