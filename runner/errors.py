"""Errors raised by the runner.

    RunnerError             base: one line, says what failed and why (CLI exit 125, as Docker)
    ├── NoSuchContainer     no container by that name or id prefix
    ├── ContainerConflict   a name in use, a running container removed without -f, ...
    ├── NoSuchVolume        no volume by that name (Docker's ``get NAME: no such volume``)
    ├── VolumeInUse         a volume that a container's record mounts, asked to go
    └── StartFailed         a container or an exec'd command did not start; ``code`` is the exit
                            code to give: 125 (strata failed), 126 (cannot run), 127 (not found)

The CLI prints ``str(err)`` and chooses the exit code; nothing else in the runner prints.
"""

from __future__ import annotations


class RunnerError(Exception):
    pass


class NoSuchContainer(RunnerError):
    pass


class ContainerConflict(RunnerError):
    pass


class NoSuchVolume(RunnerError):
    pass


class VolumeInUse(RunnerError):
    pass


class StartFailed(RunnerError):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
