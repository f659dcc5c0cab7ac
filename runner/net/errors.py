"""Errors of the container networks.

RunnerError              (runner.errors: one line, CLI exit 125)
└── NetworkError         a network could not be set up, or a value for one is refused
    ├── NoSuchNetwork    no network by that name or id (Docker's ``network X not found``)
    └── PortInUse        a host port to publish is taken (Docker's ``port is already allocated``)
"""

from __future__ import annotations

from ..errors import RunnerError


class NetworkError(RunnerError):
    pass


class NoSuchNetwork(NetworkError):
    pass


class PortInUse(NetworkError):
    pass
