"""``strata version`` and ``strata --version``: what a bug report needs — strata's version, Python,
pyfuse3 and libfuse, the kernel, the cgroup version this host gives containers, the store root."""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import importlib.metadata
import json
import os
import platform
from typing import Any

from store import Store


def strata_version() -> str:
    try:
        return importlib.metadata.version("strata")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _libfuse() -> str:
    name = ctypes.util.find_library("fuse3") or "libfuse3.so.3"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return "not found"
    lib.fuse_pkgversion.restype = ctypes.c_char_p
    version = lib.fuse_pkgversion()
    return version.decode() if version else "unknown"


def _pyfuse3() -> str:
    try:
        return importlib.metadata.version("pyfuse3")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cgroups() -> str:
    from .. import cgroups

    version = cgroups.for_host("version-probe").version
    return f"v{version}" if version else "none (not root)"


def facts(store: Store) -> dict[str, Any]:
    return {
        "Version": strata_version(),
        "Python": platform.python_version(),
        "Pyfuse3": _pyfuse3(),
        "Libfuse": _libfuse(),
        "Kernel": platform.release(),
        "Os": "linux",
        "Arch": platform.machine(),
        "Cgroups": _cgroups(),
        "Root": store.root.path,
        "Uid": os.geteuid(),
    }


def cmd_version(store: Store, args: argparse.Namespace) -> int:
    info = facts(store)
    if args.format == "json":
        print(json.dumps(info))
        return 0
    width = max(len(k) for k in info) + 2
    print("strata:")
    for key, value in info.items():
        print(f" {key + ':':<{width}}{value}")
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("version", help="show strata's version and what it runs on")
    p.add_argument("--format", choices=["text", "json"], default="text", help="text or json (default text)")
    p.set_defaults(func=cmd_version)
