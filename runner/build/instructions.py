"""Nodes -> stages of checked instructions, as BuildKit's ``frontend/dockerfile/instructions`` makes
them (pure: nothing expanded yet, nothing run). Every form the Dockerfile reference allows is
recognised and every mistake it names is refused here, with its line, before a build starts.

An ``Instruction`` keeps its arguments unexpanded in the shape its keyword takes: an exec form
(``exec``) or a shell form (``text``) for RUN/CMD/ENTRYPOINT/SHELL/HEALTHCHECK; whitespace-split
``words`` for FROM/COPY/ADD/EXPOSE/VOLUME (or their JSON form); ``pairs`` for ENV/LABEL/ARG; the
whole ``text`` for USER/WORKDIR/STOPSIGNAL/MAINTAINER/ONBUILD.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import words
from .errors import BuildError
from .parser import Heredoc, Node, Parsed, json_array, parse

KEYWORDS = (
    "FROM",
    "RUN",
    "CMD",
    "ENTRYPOINT",
    "COPY",
    "ADD",
    "ENV",
    "ARG",
    "LABEL",
    "WORKDIR",
    "USER",
    "EXPOSE",
    "VOLUME",
    "SHELL",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "ONBUILD",
    "MAINTAINER",
)
_FLAGS = {
    "FROM": ("platform",),
    "COPY": ("from", "chown", "chmod"),
    "ADD": ("chown", "chmod"),
    "HEALTHCHECK": ("interval", "timeout", "start-period", "start-interval", "retries"),
}
_BUILDKIT_ONLY = {
    "RUN": ("mount", "network", "security", "device"),
    "COPY": ("link", "parents", "exclude"),
    "ADD": ("link", "checksum", "keep-git-dir", "exclude", "unpack"),
}
_STAGE_NAME = re.compile(r"^[a-z][a-z0-9-_.]*$")


@dataclass
class Instruction:
    keyword: str
    line: int
    end_line: int
    original: str
    flags: dict[str, str] = field(default_factory=dict)
    exec: list[str] | None = None  # the JSON (exec) form
    text: str = ""  # the shell form, or the whole argument
    words: list[str] = field(default_factory=list)
    pairs: list[tuple[str, str | None]] = field(default_factory=list)
    heredocs: list[Heredoc] = field(default_factory=list)
    trigger: Instruction | None = None  # ONBUILD's instruction

    def where(self, name: str) -> str:
        return f"{name}:{self.line}"


@dataclass
class Stage:
    index: int
    name: str  # the AS name, lower case, or ""
    base: str  # the image or stage it starts from, unexpanded
    platform: str
    line: int
    original: str
    instructions: list[Instruction] = field(default_factory=list)

    def label(self) -> str:
        return self.name or str(self.index)


@dataclass
class Dockerfile:
    name: str  # how errors call it
    escape: str
    meta_args: list[Instruction]  # ARGs before the first FROM
    stages: list[Stage]


def load(text: str, name: str = "Dockerfile") -> Dockerfile:
    """Parse and check a whole Dockerfile. ``BuildError`` (with the line) for anything wrong."""
    parsed: Parsed = parse(text, name)
    meta: list[Instruction] = []
    stages: list[Stage] = []
    for node in parsed.nodes:
        ins = instruction(node, parsed.escape, name)
        if ins.keyword == "FROM":
            base = ins.words[0]
            stage_name = ins.words[2].lower() if len(ins.words) == 3 else ""
            if stage_name and not _STAGE_NAME.match(stage_name):
                raise BuildError(
                    f"{ins.where(name)}: invalid name for build stage: {stage_name!r}, name can't start "
                    "with a number or contain symbols"
                )
            if stage_name and any(s.name == stage_name for s in stages):
                raise BuildError(f"{ins.where(name)}: duplicate stage name {stage_name!r}")
            stages.append(Stage(len(stages), stage_name, base, ins.flags.get("platform", ""), ins.line, ins.original))
        elif not stages:
            if ins.keyword != "ARG":
                raise BuildError(
                    f"{ins.where(name)}: {ins.keyword} before the first FROM: no build stage in "
                    "current context (only ARG may come before FROM)"
                )
            meta.append(ins)
        else:
            stages[-1].instructions.append(ins)
    if not stages:
        raise BuildError(f"{name}: the Dockerfile has no FROM: nothing to build")
    return Dockerfile(name, parsed.escape, meta, stages)


def instruction(node: Node, escape: str, name: str) -> Instruction:
    """One node checked and put in its keyword's shape."""
    where = f"{name}:{node.line}"
    kw = node.keyword
    if kw not in KEYWORDS:
        raise BuildError(f"{where}: unknown instruction: {kw}")
    ins = Instruction(kw, node.line, node.end_line, node.original, _flags(node, where), heredocs=node.heredocs)
    args = node.args
    if kw in ("RUN", "CMD", "ENTRYPOINT", "SHELL"):
        ins.exec = json_array(args)
        ins.text = args
        if kw == "RUN" and ins.exec is None and not args:
            raise BuildError(f"{where}: RUN requires at least one argument")
        if kw == "SHELL":
            if ins.exec is None:
                raise BuildError(f"{where}: SHELL requires the arguments to be in JSON form")
            if not ins.exec:
                raise BuildError(f"{where}: SHELL requires at least one argument")
    elif kw in ("COPY", "ADD"):
        ins.exec = json_array(args)
        ins.words = list(ins.exec) if ins.exec is not None else args.split()
        wanted = 1 if node.heredocs else 2
        if len(ins.words) < wanted:
            raise BuildError(f"{where}: {kw} requires at least two arguments, but only {len(ins.words)} provided")
    elif kw == "FROM":
        ins.words = args.split()
        if not (len(ins.words) == 1 or (len(ins.words) == 3 and ins.words[1].lower() == "as")):
            raise BuildError(f"{where}: FROM requires either one or three arguments (IMAGE [AS NAME])")
    elif kw in ("ENV", "LABEL"):
        ins.pairs = _name_values(args, kw, where, escape)
    elif kw == "ARG":
        raw = words.raw_words(args, escape)
        if not raw:
            raise BuildError(f"{where}: ARG requires at least one argument")
        for word in raw:
            key, eq, value = word.partition("=")
            if not key:
                raise BuildError(f"{where}: ARG names can not be blank")
            ins.pairs.append((key, value if eq else None))
    elif kw in ("EXPOSE", "VOLUME"):
        ins.exec = json_array(args) if kw == "VOLUME" else None
        ins.words = list(ins.exec) if ins.exec is not None else args.split()
        if not ins.words:
            raise BuildError(f"{where}: {kw} requires at least one argument")
    elif kw == "HEALTHCHECK":
        _healthcheck(ins, args, where)
    elif kw == "ONBUILD":
        _onbuild(ins, node, escape, name)
    else:  # USER WORKDIR STOPSIGNAL MAINTAINER: one string
        ins.text = args
        if not args:
            raise BuildError(f"{where}: {kw} requires exactly one argument")
    return ins


def _flags(node: Node, where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for flag in node.flags:
        key, eq, value = flag[2:].partition("=")
        if key in _BUILDKIT_ONLY.get(node.keyword, ()):
            raise BuildError(f"{where}: {node.keyword} --{key} is a BuildKit extension strata build does not have")
        if key not in _FLAGS.get(node.keyword, ()):
            raise BuildError(f"{where}: unknown flag: --{key} (for {node.keyword})")
        if not eq:
            raise BuildError(f"{where}: missing a value on flag: --{key}")
        if key in out:
            raise BuildError(f"{where}: duplicate flag specified: --{key}")
        out[key] = value
    return out


def _name_values(args: str, kw: str, where: str, escape: str) -> list[tuple[str, str | None]]:
    """parseNameVal: ``k=v k2="v 2"``, or the legacy ``KEY value with spaces`` (one pair)."""
    raw = words.raw_words(args, escape)
    if not raw:
        raise BuildError(f"{where}: {kw} requires at least one argument")
    if "=" not in raw[0]:
        parts = re.split(r"[ \t]+", args, maxsplit=1)
        if len(parts) < 2 or not parts[1].strip():
            raise BuildError(f"{where}: {kw} must have two arguments (or be KEY=VALUE)")
        return [(parts[0], parts[1].strip())]
    out: list[tuple[str, str | None]] = []
    for word in raw:
        key, eq, value = word.partition("=")
        if not eq:
            raise BuildError(f"{where}: syntax error - can't find = in {word!r}. Must be of the form: name=value")
        if not key:
            raise BuildError(f"{where}: {kw} names can not be blank")
        out.append((key, value))
    return out


def _healthcheck(ins: Instruction, args: str, where: str) -> None:
    parts = re.split(r"[ \t]+", args, maxsplit=1) if args else []
    if not parts:
        raise BuildError(f"{where}: HEALTHCHECK requires at least one argument")
    kind = parts[0].upper()
    rest = parts[1].strip() if len(parts) > 1 else ""
    if kind == "NONE":
        if rest or ins.flags:
            raise BuildError(f"{where}: HEALTHCHECK NONE takes no arguments")
        ins.words = ["NONE"]
        return
    if kind != "CMD":
        raise BuildError(f'{where}: unknown type "{parts[0]}" in HEALTHCHECK (try CMD)')
    ins.exec = json_array(rest)
    ins.text = rest
    if (ins.exec is not None and not ins.exec) or not rest:
        raise BuildError(f"{where}: missing command after HEALTHCHECK CMD")
    ins.words = ["CMD"]


def _onbuild(ins: Instruction, node: Node, escape: str, name: str) -> None:
    where = f"{name}:{node.line}"
    expression = re.sub(r"(?i)^\s*ONBUILD\s*", "", node.original, count=1).strip()
    if not expression:
        raise BuildError(f"{where}: ONBUILD requires at least one argument")
    inner = parse(expression, name).nodes
    if len(inner) != 1:
        raise BuildError(f"{where}: ONBUILD takes one instruction")
    keyword = inner[0].keyword
    if keyword == "ONBUILD":
        raise BuildError(f"{where}: chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if keyword in ("FROM", "MAINTAINER"):
        raise BuildError(f"{where}: {keyword} isn't allowed as an ONBUILD trigger")
    sub = inner[0]
    sub.line = sub.end_line = node.line
    ins.trigger = instruction(sub, escape, name)
    ins.text = expression
