"""How the runner starts its own modules in fresh interpreters (``runner.supervisor``, ``runner.init``):
the same Python, with this package importable whether or not it is installed."""

from __future__ import annotations

import os
import sys

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def module_command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def module_env(minimal: bool = False) -> dict[str, str]:
    """This environment (or, with ``minimal``, only PATH: what a container's init may see)."""
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")} if minimal else dict(os.environ)
    return {**base, "PYTHONPATH": _PACKAGE_PARENT}
