"""Signals by name or number, as Docker's ``ParseSignal`` reads them (``kill -s``, ``--stop-signal``,
an image's ``STOPSIGNAL``)."""

from __future__ import annotations

import re
import signal

from .errors import RunnerError


def parse_signal(value: str) -> int:
    """Docker's ParseSignal, checked as its daemon does before sending: a number 1..SIGRTMAX or a
    name with or without SIG (any case): the signal module's, RTMIN+n and RTMAX-n."""
    name = value.upper().removeprefix("SIG")
    number: int | None = None
    if re.fullmatch(r"[0-9]{1,3}", value):
        number = int(value)
    elif "SIG" + name in signal.Signals.__members__:  # not SIG_DFL, SIG_IGN: those are handlers
        number = signal.Signals["SIG" + name].value
    elif m := re.fullmatch(r"RTMIN\+([0-9]{1,3})", name):
        number = signal.SIGRTMIN + int(m[1])
    elif m := re.fullmatch(r"RTMAX-([0-9]{1,3})", name):
        number = signal.SIGRTMAX - int(m[1])
    if number is None or not (1 <= number <= signal.SIGRTMAX) or (name.startswith("RT") and number < signal.SIGRTMIN):
        raise RunnerError(f"Invalid signal: {value}")
    return number
