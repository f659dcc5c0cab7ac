"""The build's plan: the stages the target needs, and each of their steps with its arguments expanded,
its image config after it, its probe command (the cache key, which ``created_by`` spells) and its
progress name. Everything a Dockerfile says is static once the build args are known, so all of it is
decided here, before anything is built: bad input (an unknown image, a COPY source missing or outside
the context, a bad flag) fails with its line and leaves nothing behind. What only a built stage can
say (``COPY --from=STAGE``'s checksums) and ADD's URLs are resolved when their step runs.

Semantics are the classic builder's (moby ``daemon/builder/dockerfile``): ENV wins over ARG; an ARG
takes ``--build-arg``, else its default, else the value of the global ARG of that name; RUN gets the
ARGs in scope in its environment and, but for the proxy ARGs nobody declared, in its probe (``|N
K=V``); ENTRYPOINT drops an inherited CMD; a base image's ONBUILD triggers run right after its FROM;
the default PATH joins an Env that has none. Stages run in file order, only those the target needs
(BuildKit's rule); ``--label`` adds a last LABEL step to the target stage.
"""

from __future__ import annotations

import copy
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import arguments, history, words
from .errors import BuildError
from .history import go_strings_q, go_strings_v, healthcheck_q
from .instructions import Dockerfile, Instruction, Stage, instruction
from .parser import parse

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PROXY_ARGS = (
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
)
PLATFORM_ARGS = {
    "TARGETPLATFORM": "linux/amd64",
    "TARGETOS": "linux",
    "TARGETARCH": "amd64",
    "TARGETVARIANT": "",
    "BUILDPLATFORM": "linux/amd64",
    "BUILDOS": "linux",
    "BUILDARCH": "amd64",
    "BUILDVARIANT": "",
}
_SHOWN = ("RUN", "COPY", "ADD", "WORKDIR")  # the steps BuildKit's progress names (and counts)

ImageLookup = Callable[[str], tuple[str, dict[str, Any]] | None]  # ref -> (image id, image config)


@dataclass
class Options:
    build_args: dict[str, str] = field(default_factory=dict)
    target: str = ""
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class CopyPlan:
    keyword: str  # COPY or ADD
    sources: list[str]  # expanded, as written (paths in the context, a stage or an image; URLs)
    heredocs: dict[str, bytes]  # a source ``<<NAME`` -> its content (expanded unless quoted)
    dest: str  # expanded, as written: the probe says ``in DEST``
    target: str  # absolute (against WORKDIR), its trailing slash kept
    chown: str
    chmod: int | None
    from_stage: int | None
    from_image: str | None  # an image id


@dataclass
class Step:
    ins: Instruction
    kind: str  # meta | run | copy | workdir
    vertex: str | None  # the progress name ("[2/4] RUN echo hi"); metadata steps have none
    config: dict[str, Any]  # the image's run config after the step
    probe: list[str]  # the probe command (COPY/ADD: filled in once the checksums are known)
    author: str = ""
    run: list[str] = field(default_factory=list)  # RUN: what runs, and its environment
    env: list[str] = field(default_factory=list)
    script: tuple[str, str] | None = None  # RUN <<EOF with a #! line: (name, content), run as a file
    workdir: str = ""
    copy: CopyPlan | None = None


@dataclass
class StagePlan:
    stage: Stage
    base_stage: int | None  # FROM an earlier stage
    base_id: str | None  # FROM an image (None: scratch or a stage)
    base_vertex: str | None  # "[1/4] FROM docker.io/library/x:latest"
    steps: list[Step] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)  # after the last step


@dataclass
class Plan:
    dockerfile: Dockerfile
    stages: dict[int, StagePlan]  # the needed stages, by index, in file order
    target: int
    warnings: list[str]


class _State:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.args: dict[str, str | None] = {}  # ARGs declared in this stage (a default, or None)
        self.cmd_set = False
        self.author = ""


class Planner:
    def __init__(self, dockerfile: Dockerfile, options: Options, images: ImageLookup) -> None:
        self.df = dockerfile
        self.options = options
        self.images = images
        self.used_args: set[str] = set()
        self.meta: dict[str, str | None] = {}
        self.warnings: list[str] = []
        for ins in dockerfile.meta_args:
            for key, default in ins.pairs:
                value = words.expand(default, self._meta_env(), self.df.escape) if default is not None else None
                self.meta[key] = value
                self.used_args.add(key)

    def where(self, line: int) -> str:
        return f"{self.df.name}:{line}"

    # -- args -------------------------------------------------------------------------------------
    def _meta_value(self, key: str) -> str | None:
        if key in self.options.build_args:
            return self.options.build_args[key]
        if self.meta.get(key) is not None:
            return self.meta[key]
        return PLATFORM_ARGS.get(key)

    def _meta_env(self) -> dict[str, str]:
        env = dict(PLATFORM_ARGS)
        env.update({k: v for k in self.meta if (v := self._meta_value(k)) is not None})
        return env

    def _arg_value(self, state: _State, key: str) -> str | None:
        if key in self.options.build_args:
            return self.options.build_args[key]
        default = state.args.get(key)
        if default is not None:
            return default
        return self._meta_value(key)

    def _allowed(self, state: _State) -> dict[str, str]:
        """The build args in scope with a value (FilterAllowed, before Env is taken out)."""
        out = {}
        for key in [*state.args, *[p for p in PROXY_ARGS if p not in state.args]]:
            value = self._arg_value(state, key) if key in state.args else self.options.build_args.get(key)
            if value is not None:
                out[key] = value
        return out

    def _env(self, state: _State) -> dict[str, str]:
        """What ``$NAME`` sees: the config's Env over the args in scope."""
        env = {k: v for k, v in self._allowed(state).items() if k in state.args}
        for entry in state.config.get("Env") or []:
            key, _, value = entry.partition("=")
            env[key] = value
        return env

    def _expand(self, text: str, state: _State, line: int) -> str:
        try:
            return words.expand(text, self._env(state), self.df.escape)
        except ValueError as e:
            raise BuildError(f"{self.where(line)}: {e}") from None

    # -- stages -----------------------------------------------------------------------------------
    def plan(self) -> Plan:
        stages = self.df.stages
        target = len(stages) - 1
        if self.options.target:
            found = [s.index for s in stages if s.name == self.options.target.lower()]
            if not found:
                raise BuildError(f"target stage {self.options.target!r} could not be found")
            target = found[0]
        bases: dict[int, str] = {}
        for stage in stages:
            try:
                bases[stage.index] = words.expand(stage.base, self._meta_env(), self.df.escape)
            except ValueError as e:
                raise BuildError(f"{self.where(stage.line)}: {e}") from None
            if not bases[stage.index]:
                raise BuildError(f"{self.where(stage.line)}: base name ({stage.base}) should not be blank")
        needed = self._needed(target, bases)
        plans: dict[int, StagePlan] = {}
        for stage in stages:
            if stage.index in needed:
                plans[stage.index] = self._stage(stage, bases[stage.index], plans, stage.index == target)
        unused = sorted(k for k in self.options.build_args if k not in self.used_args and k not in PROXY_ARGS)
        if unused:
            self.warnings.append(f"[Warning] One or more build-args [{' '.join(unused)}] were not consumed")
        return Plan(self.df, plans, target, self.warnings)

    def _stage_ref(self, name: str, before: int) -> int | None:
        """The stage ``name`` (an AS name, or an index for --from) names, if it names one."""
        for stage in self.df.stages[:before]:
            if stage.name and stage.name == name.lower():
                return stage.index
        if name.isdigit() and int(name) < before:
            return int(name)
        return None

    def _needed(self, target: int, bases: dict[int, str]) -> set[int]:
        needed: set[int] = set()
        pending = [target]
        while pending:
            index = pending.pop()
            if index in needed:
                continue
            needed.add(index)
            if (base := self._stage_ref(bases[index], index)) is not None:
                pending.append(base)
            for ins in self.df.stages[index].instructions:
                if ins.keyword == "COPY" and "from" in ins.flags:
                    try:
                        source = words.expand(ins.flags["from"], self._meta_env(), self.df.escape)
                    except ValueError:
                        source = ins.flags["from"]
                    if (ref := self._stage_ref(source, index)) is not None:
                        pending.append(ref)
                    elif source.lower() == self.df.stages[index].name and source:
                        raise BuildError(f"{self.where(ins.line)}: circular dependency detected on stage: {source}")
        return needed

    def _stage(self, stage: Stage, base: str, plans: dict[int, StagePlan], is_target: bool) -> StagePlan:
        if stage.platform:
            self.warnings.append(
                f"{self.where(stage.line)}: FROM --platform={stage.platform} is ignored: strata "
                "builds for the host's platform"
            )
        base_stage = self._stage_ref(base, stage.index)
        triggers: list[str] = []
        base_id = None
        ref = ""
        if base_stage is not None:
            config = copy.deepcopy(plans[base_stage].config)
            config.pop("OnBuild", None)  # a stage's triggers are for later builds, not this one
        elif base == "scratch":
            config = {}
        else:
            found = self.images(base)
            if found is None:
                raise BuildError(
                    f"{self.where(stage.line)}: FROM {base}: no such image (strata build does not pull: "
                    f"strata pull or load it first)"
                )
            base_id, image = found
            config = copy.deepcopy(image.get("config") or {})
            triggers = list(config.pop("OnBuild", None) or [])
            ref = base if base.startswith("sha256:") else arguments.full_name(base)
        config.pop("Image", None)  # each step's config names its own parent (the executor's)
        env = config.get("Env") or []
        if not any(e.split("=", 1)[0] == "PATH" for e in env):
            config["Env"] = [*env, DEFAULT_PATH]
        instructions = [self._trigger(text, stage.line) for text in triggers] + list(stage.instructions)
        if is_target and self.options.labels:
            pairs = " ".join(f"{k}={arguments.words_quote(v)}" for k, v in sorted(self.options.labels.items()))
            instructions.append(instruction(parse(f"LABEL {pairs}", self.df.name).nodes[0], "\\", self.df.name))
            instructions[-1].line = instructions[-1].end_line = stage.line
        total = (1 if base_id else 0) + sum(1 for i in instructions if i.keyword in _SHOWN)
        counter = _Counter(
            total,
            stage.name
            if len(self.df.stages) > 1 and stage.name
            else (f"stage-{stage.index}" if len(self.df.stages) > 1 else ""),
        )
        plan = StagePlan(stage, base_stage, base_id, counter.name(f"FROM {ref}") if base_id else None)
        state = _State(config)
        for n, ins in enumerate(instructions):
            plan.steps.append(self._step(ins, state, counter, onbuild=n < len(triggers), current=stage.index))
        plan.config = state.config
        return plan

    def _trigger(self, text: str, line: int) -> Instruction:
        try:
            nodes = parse(text, self.df.name).nodes
            if len(nodes) != 1:
                raise BuildError("an ONBUILD trigger must be one instruction")
            nodes[0].line = nodes[0].end_line = line
            return instruction(nodes[0], "\\", self.df.name)
        except BuildError as e:
            raise BuildError(f"{self.where(line)}: the base image's ONBUILD trigger {text!r}: {e}") from None

    # -- steps ------------------------------------------------------------------------------------
    def _step(self, ins: Instruction, state: _State, counter: _Counter, onbuild: bool, current: int) -> Step:
        kw = ins.keyword
        config = state.config
        shell = config.get("Shell")
        vertex = None
        if kw in _SHOWN:
            shown = arguments.words_or(ins.original, self._env(state), self.df.escape)
            shown = kw + shown[len(kw) :] if shown.upper().startswith(kw) else shown
            vertex = counter.name(("ONBUILD " if onbuild else "") + shown)
        if kw == "RUN":
            return self._run(ins, state, vertex)
        if kw in ("COPY", "ADD"):
            return self._copy(ins, state, vertex, current)
        comment = ""
        if kw == "ENV":
            env = list(config.get("Env") or [])
            parts = []
            values = self._env(state)
            for key, raw in ins.pairs:
                key = arguments.words_or_fail(key, values, self.df.escape, self.where(ins.line))
                value = arguments.words_or_fail(raw or "", values, self.df.escape, self.where(ins.line))
                parts.append(f"{key}={value}")
                if any(e.split("=", 1)[0] == key for e in env):  # replaced where it was, as Docker does
                    env = [f"{key}={value}" if e.split("=", 1)[0] == key else e for e in env]
                else:
                    env.append(f"{key}={value}")
            config["Env"] = env
            comment = "ENV " + " ".join(parts)
        elif kw == "LABEL":
            labels = dict(config.get("Labels") or {})
            parts = []
            values = self._env(state)
            for key, raw in ins.pairs:
                key = arguments.words_or_fail(key, values, self.df.escape, self.where(ins.line))
                value = arguments.words_or_fail(raw or "", values, self.df.escape, self.where(ins.line))
                labels[key] = value
                parts.append(f"{key}={value}")
            config["Labels"] = labels
            comment = "LABEL " + " ".join(parts)
        elif kw == "ARG":
            parts = []
            for key, raw in ins.pairs:
                default = self._expand(raw, state, ins.line) if raw is not None else None
                state.args[key] = default
                self.used_args.add(key)
                parts.append(key if default is None else f"{key}={default}")
            comment = "ARG " + " ".join(parts)
        elif kw == "WORKDIR":
            requested = self._expand(ins.text, state, ins.line)
            current_dir = config.get("WorkingDir") or ""
            workdir = (
                posixpath.normpath(requested)
                if requested.startswith("/")
                else posixpath.normpath(posixpath.join("/", current_dir, requested))
            )
            workdir = "/" + workdir.lstrip("/")
            config["WorkingDir"] = workdir
            step = Step(
                ins,
                "workdir",
                vertex,
                copy.deepcopy(config),
                history.nop_string(shell, f"WORKDIR {workdir}"),
                workdir=workdir,
            )
            return step
        elif kw == "USER":
            config["User"] = self._expand(ins.text, state, ins.line)
            comment = f"USER {config['User']}"
        elif kw in ("CMD", "ENTRYPOINT"):
            command = (
                list(ins.exec)
                if ins.exec is not None
                else ([*(shell or history.DEFAULT_SHELL), ins.text] if ins.text else [])
            )
            if kw == "CMD":
                config["Cmd"] = command
                state.cmd_set = state.cmd_set or bool(command)
            else:
                config["Entrypoint"] = command
                if not state.cmd_set:
                    config["Cmd"] = None
            comment = f"{kw} {go_strings_q(command)}"
        elif kw == "EXPOSE":
            ports: list[str] = []
            for word in ins.words:
                try:
                    ports += words.expand_words(word, self._env(state), self.df.escape)
                except ValueError as e:
                    raise BuildError(f"{self.where(ins.line)}: {e}") from None
            exposed = dict(config.get("ExposedPorts") or {})
            for port in ports:
                for name in arguments.port_specs(port, self.where(ins.line)):
                    exposed[name] = {}
            config["ExposedPorts"] = exposed
            comment = "EXPOSE " + " ".join(ports)
        elif kw == "VOLUME":
            volumes = dict(config.get("Volumes") or {})
            given = [self._expand(w, state, ins.line) for w in ins.words]
            for volume in given:
                if not volume:
                    raise BuildError(f"{self.where(ins.line)}: VOLUME specified can not be an empty string")
                volumes[volume] = {}
            config["Volumes"] = volumes
            comment = "VOLUME " + go_strings_v(given)
        elif kw == "SHELL":
            config["Shell"] = list(ins.exec or [])
            comment = "SHELL " + go_strings_v(config["Shell"])
        elif kw == "STOPSIGNAL":
            value = self._expand(ins.text, state, ins.line)
            arguments.check_signal(value, self.where(ins.line))
            config["StopSignal"] = value
            comment = f"STOPSIGNAL {value}"
        elif kw == "HEALTHCHECK":
            config["Healthcheck"] = arguments.healthcheck(ins, self.where(ins.line))
            comment = "HEALTHCHECK " + healthcheck_q(config["Healthcheck"])
        elif kw == "ONBUILD":
            config["OnBuild"] = [*(config.get("OnBuild") or []), ins.text]
            comment = "ONBUILD " + ins.text
        elif kw == "MAINTAINER":
            state.author = ins.text
            comment = "MAINTAINER " + ins.text
        return Step(ins, "meta", vertex, copy.deepcopy(config), history.nop(shell, comment), author=state.author)

    def _run(self, ins: Instruction, state: _State, vertex: str | None) -> Step:
        config = state.config
        shell = list(config.get("Shell") or history.DEFAULT_SHELL)
        script = None
        if ins.exec is not None:
            cmd = list(ins.exec)
        elif ins.heredocs:
            doc = ins.heredocs[0]
            body = arguments.chomp(doc)
            if len(ins.heredocs) == 1 and ins.text.strip().startswith("<<") and len(words.raw_words(ins.text)) == 1:
                if body.startswith("#!"):
                    script = (doc.name, body)
                    cmd = [*shell, f"/.strata-heredoc/{doc.name}"]
                else:
                    cmd = [*shell, body]
            else:
                full = ins.text + "".join(f"\n{d.content}{d.name}" for d in ins.heredocs)
                cmd = [*shell, full]
        else:
            cmd = [*shell, ins.text]
        allowed = self._allowed(state)
        env_keys = {e.split("=", 1)[0] for e in config.get("Env") or []}
        build_env = [f"{k}={v}" for k, v in allowed.items() if k not in env_keys]
        shown = [e for e in build_env if e.split("=", 1)[0] not in PROXY_ARGS or e.split("=", 1)[0] in state.args]
        probe = history.with_build_args(shown, cmd)
        return Step(
            ins,
            "run",
            vertex,
            copy.deepcopy(config),
            probe,
            author=state.author,
            run=cmd,
            env=[*(config.get("Env") or []), *build_env],
            script=script,
        )

    def _copy(self, ins: Instruction, state: _State, vertex: str | None, current: int) -> Step:
        where = self.where(ins.line)
        values = self._env(state)

        def expand(text: str) -> str:
            return arguments.words_or_fail(text, values, self.df.escape, where)

        from_stage = from_image = None
        if "from" in ins.flags:
            source = expand(ins.flags["from"])
            from_stage = self._stage_ref(source, current)
            if from_stage is None:
                if source.lower() == self.df.stages[current].name or (source.isdigit() and int(source) >= current):
                    raise BuildError(f"{where}: COPY --from={source}: refers to this or a later stage")
                found = self.images(source)
                if found is None:
                    raise BuildError(
                        f"{where}: COPY --from={source}: no such stage or image (strata build does not pull)"
                    )
                from_image = found[0]
        chmod = None
        if "chmod" in ins.flags:
            raw = expand(ins.flags["chmod"])
            try:
                chmod = int(raw, 8)
            except ValueError:
                raise BuildError(f"{where}: invalid --chmod={raw}: an octal mode is expected (0755)") from None
            if not 0 <= chmod <= 0o7777:
                raise BuildError(f"{where}: invalid --chmod={raw}: out of range")
        docs = {d.name: d for d in ins.heredocs}
        sources: list[str] = []
        heredocs: dict[str, bytes] = {}
        for word in ins.words[:-1]:
            doc = docs.get(word[2:].lstrip("-").strip("'\"")) if word.startswith("<<") else None
            if doc is not None:
                content = arguments.chomp(doc)
                heredocs[doc.name] = (expand(content) if doc.expand else content).encode()
                sources.append("<<" + doc.name)
                continue
            sources.append(expand(word))
        dest_word = ins.words[-1]
        if dest_word.startswith("<<") and dest_word[2:].lstrip("-") in docs:
            raise BuildError(f"{where}: {ins.keyword} needs a destination after its sources")
        dest = expand(dest_word)
        for source in sources:
            if "://" in source and not source.startswith("<<"):
                if ins.keyword == "COPY":
                    raise BuildError(f"{where}: source can't be a URL for COPY: {source}")
                if from_stage is not None:
                    raise BuildError(f"{where}: ADD --from is not allowed")
        workdir = state.config.get("WorkingDir") or "/"
        target = dest if dest.startswith("/") else posixpath.join("/", workdir, dest)
        target = posixpath.normpath(target) + ("/" if dest.endswith("/") or dest in (".", "./") else "")
        target = "/" + target.lstrip("/")
        plan = CopyPlan(
            ins.keyword,
            sources,
            heredocs,
            dest,
            target,
            expand(ins.flags.get("chown", "")),
            chmod,
            from_stage,
            from_image,
        )
        return Step(ins, "copy", vertex, copy.deepcopy(state.config), [], author=state.author, copy=plan)


class _Counter:
    """BuildKit's step names: ``[NAME  i/total] ...`` (the index as wide as the total)."""

    def __init__(self, total: int, stage: str) -> None:
        self.total, self.stage, self.index = total, stage, 0

    def name(self, text: str) -> str:
        if not self.total:
            return text
        self.index += 1
        width = len(str(self.total))
        return f"[{self.stage + ' ' if self.stage else ''}{self.index:>{width}}/{self.total}] {text}"
