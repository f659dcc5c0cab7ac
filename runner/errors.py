"""Errors raised by the runner.

    RunnerError             base: one line, says what failed and why (CLI exit 125, as Docker)
    ├── NoSuchContainer     no container by that name or id prefix
    └── ContainerConflict   a name in use, a running container removed without -f, ...

The CLI prints ``str(err)`` and chooses the exit code; nothing else in the runner prints.
"""

from __future__ import annotations


class RunnerError(Exception):
    pass


class NoSuchContainer(RunnerError):
    pass


class ContainerConflict(RunnerError):
    pass
