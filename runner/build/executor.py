"""``strata build``: a Dockerfile and its context -> an image, step by step, with the cache.

``build`` reads the context and the Dockerfile, plans every needed stage (``plan``: all bad input
fails there, before anything is built), reads and checksums the context files the COPY/ADD steps
name, then runs the steps in order. Each step is first looked up in the cache (``cache``); a miss
runs it: a metadata step only commits a config; WORKDIR, COPY and ADD fill an upper dir directly
(``copying``); RUN runs a container (``runstep``); each gives one image (``Store.add_step``). The
target stage's last image gets the tags. A fully cached build starts no container and mounts nothing.

Scratch work (a context from stdin, a step's upper, unpacked archives, downloads) lives in
``ROOT/builds/<id>/``, held by a lock for the build's life and removed at its end; a build that died
leaves one that the next build sweeps. A build that fails removes the images it made (each step's,
cached ones from earlier builds stay) and its containers: it leaves the store as it found it.
"""

from __future__ import annotations

import fcntl
import os
import platform
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from store import Store, StoreError
from store.images import now, parse_ref
from unionfs.layers import LayerSet

from .. import layerdiff
from ..errors import RunnerError
from . import copystep, history, runstep
from .cache import Cache, docker_config
from .context import Context, open_context
from .copying import Upper
from .errors import BuildError
from .instructions import load
from .plan import Options, Plan, Planner, StagePlan, Step
from .progress import Progress, Vertex, size
from .trees import Checksums, ImageTree

NETWORKS = ("bridge", "none", "host")  # run's default first


@dataclass
class Request:
    context: str  # a directory, or "-"
    dockerfile: str | None = None
    tags: list[str] = field(default_factory=list)
    options: Options = field(default_factory=Options)
    no_cache: bool = False
    network: str = "bridge"


def build(store: Store, request: Request, progress: Progress, stdin: BinaryIO | None = None) -> str:
    """Build; return the image id. ``BuildError`` (one line, with the Dockerfile line) on failure."""
    if request.network not in NETWORKS:
        raise BuildError(f"network mode {request.network!r} is not supported: {' or '.join(NETWORKS)}")
    for tag in request.tags:
        try:
            parse_ref(tag)
        except StoreError as e:
            raise BuildError(f"invalid tag {tag!r}: {e}") from None
    with _scratch(store.root.path) as scratch:
        context = open_context(request.context, request.dockerfile, stdin, scratch, progress)
        dockerfile = load(context.dockerfile, context.name)
        plan = Planner(dockerfile, request.options, _images(store)).plan()
        for warning in plan.warnings:
            progress.warn(warning)
        builder = _Builder(store, plan, context, progress, request, scratch)
        try:
            image_id = builder.run()
            _export(store, image_id, request.tags, progress)
        except BaseException:
            builder.undo()
            raise
    return image_id


def _images(store: Store) -> Any:
    def lookup(ref: str) -> tuple[str, dict[str, Any]] | None:
        try:
            image_id = store.images.resolve(ref)
            return image_id, store.images.config(image_id)
        except StoreError:
            return None

    return lookup


@contextmanager
def _scratch(root: str) -> Iterator[str]:
    """``ROOT/builds/<id>``, locked for the build; the ones dead builds left are swept first."""
    base = os.path.join(root, "builds")
    os.makedirs(base, mode=0o700, exist_ok=True)
    for name in os.listdir(base):
        _sweep(os.path.join(base, name))
    path = os.path.join(base, secrets.token_hex(8))
    os.mkdir(path, 0o700)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def _sweep(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # a running build's
    finally:
        os.close(fd)
    shutil.rmtree(path, ignore_errors=True)


def _export(store: Store, image_id: str, tags: list[str], progress: Progress) -> None:
    vertex = progress.vertex("exporting to image")
    vertex.status("exporting layers", done=True)
    vertex.status(f"writing image {image_id}", done=True)
    for tag in tags:
        try:
            store.tag(image_id, tag)
        except StoreError as e:
            vertex.error(str(e))
            raise BuildError(f"cannot tag {tag}: {e}") from None
        name = tag if "/" in tag.split(":")[0] else f"docker.io/library/{tag}"
        vertex.status(f"naming to {name if ':' in tag.rsplit('/', 1)[-1] else name + ':latest'}", done=True)
    vertex.done()


class _Builder:
    def __init__(
        self, store: Store, plan: Plan, context: Context, progress: Progress, request: Request, scratch: str
    ) -> None:
        self.store, self.plan, self.context, self.progress = store, plan, context, progress
        self.request, self.scratch = request, scratch
        self.cache = Cache(store, not request.no_cache)
        self.created: list[str] = []  # images this build made, in order (removed if it fails)
        self.built: dict[int, str | None] = {}  # stage index -> its last image
        self.sums = Checksums(context.tree)
        self.sources: dict[int, list[copystep.Source]] = {}  # id(step) -> its context sources
        self.uppers = 0
        self._open: list[LayerSet] = []  # source images of the step running (COPY --from)

    def where(self, step: Step) -> str:
        return f"{self.plan.dockerfile.name}:{step.ins.line}"

    def run(self) -> str:
        for ref in dict.fromkeys(
            s.base_vertex.split(" FROM ", 1)[1] for s in self.plan.stages.values() if s.base_vertex
        ):
            self.progress.vertex(f"[internal] load metadata for {ref}").done()  # (local images: nothing to do)
        self._read_context()
        for index, stage in self.plan.stages.items():
            self.built[index] = self._stage(stage)
        image = self.built[self.plan.target]
        if image is None:
            raise BuildError(
                f"{self.plan.dockerfile.name}: no image was generated: the target stage is FROM scratch "
                "with nothing in it"
            )
        return image

    def _read_context(self) -> None:
        """Find and checksum every context source of the needed stages: a missing one fails now."""
        steps = [
            s
            for sp in self.plan.stages.values()
            for s in sp.steps
            if s.copy is not None and s.copy.from_stage is None and s.copy.from_image is None
        ]
        local = any("://" not in src and not src.startswith("<<") for s in steps for src in s.copy.sources)  # type: ignore[union-attr]
        vertex = self.progress.vertex("[internal] load build context") if local else None
        for step in steps:
            assert step.copy is not None
            try:
                found = copystep.find_sources(
                    step.copy, self.context.tree, self.sums, self.where(step), "the build context"
                )
            except BuildError as e:
                if vertex is not None:
                    vertex.error(str(e))
                raise
            copystep.mark_archives(step.copy, found, self.where(step))
            self.sources[id(step)] = found
            if vertex is not None:
                vertex.status(f"transferring context: {size(self.sums.bytes_read)}")
        if vertex is not None:
            vertex.status(f"transferring context: {size(self.sums.bytes_read)}", done=True)
            vertex.done()

    def _stage(self, stage: StagePlan) -> str | None:
        image: str | None
        if stage.base_stage is not None:
            image = self.built[stage.base_stage]
        else:
            image = stage.base_id
        if stage.base_vertex is not None:
            self.progress.vertex(stage.base_vertex).done()
        for step in stage.steps:
            image = self._step(step, image)
        return image

    # -- one step ---------------------------------------------------------------------------------
    def _step(self, step: Step, parent: str | None) -> str:
        try:
            return self._step_once(step, parent)
        finally:
            for layers in self._open:
                layers.close()
            self._open.clear()

    def _step_once(self, step: Step, parent: str | None) -> str:
        vertex = self.progress.vertex(step.vertex) if step.vertex else None
        try:
            sources: list[copystep.Source] = []
            if step.copy is not None:
                sources, layers = self._copy_sources(step)
                if layers is not None:
                    self._open.append(layers)
                step.probe = history.nop_string(step.config.get("Shell"), copystep.probe_comment(step.copy, sources))
            probe = docker_config(
                {**step.config, "Cmd": step.probe, **({"Entrypoint": None} if step.kind == "run" else {})}
            )
            base = self._parent_config(parent)
            hit = self.cache.find(parent, probe, len(base.get("history") or []))
            if hit is not None:
                if vertex is not None:
                    vertex.cached()
                return hit
            tree = None
            if step.kind == "run":
                return self._run(step, parent, probe, base, vertex)
            if step.kind in ("workdir", "copy"):
                tree = self._upper()
                upper = Upper(tree, self._lowers(parent), self.scratch)
                try:
                    if step.kind == "workdir":
                        upper.make_dirs(upper.resolve(step.workdir), (0, 0))
                        upper.finish()
                    else:
                        assert step.copy is not None
                        preserve = step.copy.from_stage is not None or step.copy.from_image is not None
                        copystep.perform(upper, step.copy, sources, preserve, self.where(step))
                except OSError as e:
                    raise BuildError(f"{self.where(step)}: {step.ins.keyword} failed: {e}") from None
                finally:
                    upper.close()
            image = self._commit(step, parent, probe, base, tree)
            if vertex is not None:
                vertex.done()
            return image
        except BuildError as e:
            if vertex is not None:
                vertex.error(str(e).split(": ", 1)[-1])
            raise

    def _copy_sources(self, step: Step) -> tuple[list[copystep.Source], LayerSet | None]:
        """The step's sources, and the image layers they are read from (closed by the caller)."""
        plan = step.copy
        assert plan is not None
        where = self.where(step)
        layers = None
        if plan.from_stage is not None or plan.from_image is not None:
            image = self.built[plan.from_stage] if plan.from_stage is not None else plan.from_image
            what = f"stage {plan.from_stage}" if plan.from_stage is not None else f"image {plan.from_image}"
            layers = LayerSet(None, self._lowers(image) or [self._empty()], owners_xattr=os.geteuid() != 0)
            try:
                tree = ImageTree(layers)
                found = copystep.find_sources(plan, tree, Checksums(tree), where, what)
            except BaseException:
                layers.close()
                raise
        else:
            found = self.sources[id(step)] + copystep.download(
                plan, self.scratch, self.request.network != "none", where
            )
        if len(found) > 1 and not plan.dest.endswith("/"):
            if layers is not None:
                layers.close()
            raise BuildError(
                f"{where}: when using {plan.keyword} with more than one source file, the destination "
                "must be a directory and end with a /"
            )
        return found, layers

    def _run(
        self, step: Step, parent: str | None, probe: dict[str, Any], base: dict[str, Any], vertex: Vertex | None
    ) -> str:
        where = self.where(step)
        if parent is None:
            raise BuildError(f"{where}: RUN on FROM scratch: there is no shell or command to run in an empty image")
        config = step.config
        output = vertex.log if vertex is not None else (lambda data: None)
        try:
            with runstep.run(
                self.store,
                parent,
                step.run,
                step.env,
                config.get("WorkingDir") or "/",
                config.get("User") or "",
                self.request.network,
                step.script,
                output,
            ) as outcome:
                if outcome.error:
                    raise BuildError(f"{where}: {step.ins.keyword} failed: {outcome.error}")
                if outcome.code != 0:
                    raise BuildError(
                        f'{where}: process "{" ".join(step.run)}" did not complete successfully: '
                        f"exit code: {outcome.code}"
                    )
                image = self._commit(step, parent, probe, base, outcome.upper, outcome.lowers)
        except RunnerError as e:
            if isinstance(e, BuildError):
                raise
            raise BuildError(f"{where}: RUN failed: {e}") from None
        if vertex is not None:
            vertex.done()
        return image

    # -- images -----------------------------------------------------------------------------------
    def _parent_config(self, parent: str | None) -> dict[str, Any]:
        if parent is None:
            return {"architecture": _arch(), "os": "linux", "history": []}
        config = self.store.images.config(parent)
        if not config.get("history"):  # a base without history: one entry per layer, as Docker reads it
            config["history"] = [{"created": config.get("created", "")} for _ in config["rootfs"]["diff_ids"]]
        return config

    def _commit(
        self,
        step: Step,
        parent: str | None,
        probe: dict[str, Any],
        base: dict[str, Any],
        tree: str | None,
        lowers: list[str] | None = None,
    ) -> str:
        """The step's image; ``tree`` its layer's files (an upper over ``lowers``, for a RUN step)."""
        created = now()
        entry: dict[str, Any] = {"created": created, "created_by": " ".join(step.probe)}
        if step.author:
            entry["author"] = step.author
        config: dict[str, Any] = {
            "architecture": base.get("architecture") or _arch(),
            "os": base.get("os") or "linux",
            "config": docker_config({**step.config, "Image": parent or ""}),
            "container_config": probe,
            "created": created,
            "history": [*(base.get("history") or []), entry],
        }
        if base.get("variant"):
            config["variant"] = base["variant"]
        if step.author:
            config["author"] = step.author
        try:
            data = layerdiff.UpperData(lowers or [])  # a RUN step's metacopies keep their data below
            image = self.store.add_step(parent, config, tree, data.data_of, data.private)
        except StoreError as e:
            raise BuildError(f"{self.where(step)}: cannot commit the step: {e}") from None
        self.created.append(image)
        self.cache.added(parent, image)
        return image

    def _lowers(self, image: str | None) -> list[str]:
        if image is None:
            return []
        return [self.store.layers.diff_dir(c) for c in reversed(self.store.images.chain(image))]

    def _upper(self) -> str:
        self.uppers += 1
        path = os.path.join(self.scratch, f"upper-{self.uppers}")
        os.mkdir(path, 0o755)
        return path

    def _empty(self) -> str:
        path = os.path.join(self.scratch, "empty")
        os.makedirs(path, mode=0o755, exist_ok=True)
        return path

    def undo(self) -> None:
        """A failed build: the images it made go, newest first (a cached step of an earlier build stays)."""
        for image in reversed(self.created):
            try:
                self.store.rmi(image, prune=False)
            except StoreError:
                pass  # another build took it as a parent meanwhile: it stays, as that build's cache


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
