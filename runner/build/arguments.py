"""How an instruction's arguments are read, checked and spelled, as moby and BuildKit do: variable
expansion (and its fallback), HEALTHCHECK's flags, EXPOSE's ports, STOPSIGNAL's names, FROM's full
name, heredoc bodies. Each check fails with a ``BuildError`` naming the instruction's line."""

from __future__ import annotations

import signal
from typing import Any

from store.images import familiar, parse_ref

from . import history, words
from .errors import BuildError
from .instructions import Instruction
from .parser import Heredoc

MIN_DURATION = 1_000_000  # 1ms: moby's container.MinimumDuration


def healthcheck(ins: Instruction, where: str) -> dict[str, Any]:
    """HEALTHCHECK's config: its test and the flags, each checked as moby checks it."""
    if ins.words == ["NONE"]:
        return {"Test": ["NONE"]}
    test = ["CMD", *ins.exec] if ins.exec is not None else ["CMD-SHELL", ins.text]
    health: dict[str, Any] = {"Test": test}
    for flag, key in (
        ("interval", "Interval"),
        ("timeout", "Timeout"),
        ("start-period", "StartPeriod"),
        ("start-interval", "StartInterval"),
    ):
        if flag in ins.flags:
            try:
                value = history.parse_duration(ins.flags[flag])
            except ValueError as e:
                raise BuildError(f"{where}: {e}") from None
            if 0 < value < MIN_DURATION or value < 0:
                raise BuildError(f'{where}: Interval "{flag}" cannot be less than 1ms')
            if value:
                health[key] = value
    if "retries" in ins.flags:
        try:
            retries = int(ins.flags["retries"])
        except ValueError:
            raise BuildError(f"{where}: --retries: not a number: {ins.flags['retries']!r}") from None
        if retries < 1:
            raise BuildError(f"{where}: --retries must be at least 1 (not {retries})")
        health["Retries"] = retries
    return health


def full_name(ref: str) -> str:
    """docker.io/library/busybox:latest, as BuildKit names a FROM."""
    try:
        name, tag = parse_ref(ref)
    except Exception:
        return ref
    name = familiar(name)
    first = name.split("/", 1)[0]
    if "/" not in name:
        name = f"docker.io/library/{name}"
    elif "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}"
    return f"{name}:{tag}"


def chomp(doc: Heredoc) -> str:
    return "".join(line.lstrip("\t") for line in doc.content.splitlines(keepends=True)) if doc.chomp else doc.content


def words_or(text: str, env: dict[str, str], escape: str) -> str:
    """BuildKit's processCmdEnv: the text expanded, or as it is if it does not expand."""
    try:
        return words.expand(text, env, escape)
    except ValueError:
        return text


def words_or_fail(text: str, env: dict[str, str], escape: str, where: str) -> str:
    try:
        return words.expand(text, env, escape)
    except ValueError as e:
        raise BuildError(f"{where}: {e}") from None


def words_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def port_specs(spec: str, where: str) -> list[str]:
    """EXPOSE's ``80``, ``53/udp``, ``8000-8002``: one ``PORT/PROTO`` each."""
    port, _, proto = spec.rpartition(":")[2].partition("/")
    proto = (proto or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise BuildError(f"{where}: invalid proto: {proto}")
    start, _, end = port.partition("-")
    try:
        first, last = int(start), int(end or start)
    except ValueError:
        raise BuildError(f"{where}: invalid containerPort: {port}") from None
    if not (0 < first <= last <= 65535):
        raise BuildError(f"{where}: invalid containerPort: {port}")
    return [f"{p}/{proto}" for p in range(first, last + 1)]


def check_signal(value: str, where: str) -> None:
    """Docker's ParseSignal: a number, or a name with or without SIG."""
    name = value.upper().removeprefix("SIG")
    if value.isdigit() and 0 < int(value) <= signal.SIGRTMAX:
        return
    if "SIG" + name in signal.Signals.__members__ or name.startswith(("RTMIN", "RTMAX")):
        return
    raise BuildError(f"{where}: Invalid signal: {value}")
