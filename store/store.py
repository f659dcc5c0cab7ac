"""The store's one entry point: images in and out (import, load, save, pull, push), tags, removal,
and the views the CLI prints (made by ``store.views``).

Every change runs in one writer transaction (``Root.writer``): staged, checked, then published in the
order blobs -> layers -> configs -> image records -> tags, so a failure before the end changes nothing
and a kill during publishing leaves no visible half image.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import threading
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, BinaryIO

from . import views
from .blobs import Blobs, StagedBlob
from .changes import apply_changes
from .digest import chain_id, hex_of, sha256_bytes
from .errors import BadInput, Conflict, RegistryError, StoreError
from .images import Images, now, parse_ref
from .layers import Layers, StagedLayer
from .load import ImagePlan, plan
from .root import Root, Transaction, default_root
from .save import SaveItem, write_archive
from .sources import Source, open_source
from .tarwrite import DataOf, write_tree
from .views import HistoryRow, TreeNode, diff_id_of

if TYPE_CHECKING:
    from .registry import RemoteOptions

# (item, bytes done, bytes total; 0 when unknown). An item is one layer (its blob's or diff_id's first 12
# hex digits) or one whole transfer ("import", "save"); a layer that is already here is not reported.
Progress = Callable[[str, int, int], None]


class _Counter:
    """Bytes of one item so far, told to ``progress`` as they come (the caller decides how often to draw)."""

    def __init__(self, progress: Progress | None, total: int, item: str) -> None:
        self.progress, self.total, self.done, self.item = progress, total, 0, item
        if progress:
            progress(item, 0, total)

    def __call__(self, n: int) -> None:
        self.done += n
        if self.progress:
            self.progress(self.item, self.done, self.total)


class Store:
    def __init__(self, root: str | None = None) -> None:
        self.root = Root(root or default_root())
        self.blobs = Blobs(self.root)
        self.layers = Layers(self.root, self.blobs)
        self.images = Images(self.root, self.blobs, self.layers)

    # -- adding images ----------------------------------------------------------------------------
    def _publish(
        self,
        txn: Transaction,
        layers: list[StagedLayer],
        configs: list[StagedBlob],
        records: list[tuple[str, str | None]],
        tags: list[tuple[str, str]],
    ) -> list[str]:
        """Make staged work visible, in dependency order. Returns notes on re-pointed tags."""
        if layers or configs or any(not self.images.exists(image_id) for image_id, _parent in records):
            self.root.syncfs()  # what is staged is on the disk before a rename makes it visible
        for staged in layers:
            self.layers.publish(txn, staged)
            _failpoint("layer-published")
        for blob in configs:
            self.blobs.publish(txn, blob)
        _failpoint("configs-published")
        for image_id, parent in records:
            self.images.publish(txn, image_id, parent)
            _failpoint("record-published")
        notes = []
        for ref, image_id in tags:
            old = self.images.set_tag(ref, image_id)
            if old:
                notes.append(f"The image {ref} already exists, renaming the old one with ID {old} to empty string")
        return notes

    def load(self, path: str, stdin: BinaryIO | None = None, progress: Progress | None = None) -> list[str]:
        """Load every image in an archive or layout. Returns Docker's messages (``Loaded image: x``)."""
        with self.root.writer() as txn, _naming(path if path != "-" else "stdin"):
            notes, loaded = self._add_from(txn, open_source(path, stdin, txn), progress)
        return notes + loaded

    def pull(
        self, ref: str, progress: Progress | None = None, options: RemoteOptions | None = None, parallel: int = 3
    ) -> tuple[str, str, list[str]]:
        """Pull ``[host[:port]/]repo[:tag|@digest]`` from its registry, checked and staged as a load is,
        ``parallel`` layers at a time (0: none ahead, each streamed as it is staged, not resumable). Returns (the local tag, or the reference for a pull by digest
        alone, which tags nothing; the digest the reference names; notes on re-pointed tags).

        Layer blobs come into ``downloads/`` first (``download.py``); a pull that stops on the network
        leaves them there for the next one, any other failure removes what it fetched."""
        # imported here: urllib3 and ssl cost ~90 ms, which only commands that talk to registries pay
        from .download import Downloads
        from .places import Places
        from .registry import Registry, RegistrySource, Repository, parse_platform, parse_remote

        options = options or _default_options()
        remote = parse_remote(ref)
        want = parse_platform(options.platform)
        local = remote.local
        with self.root.writer() as txn, _naming(str(remote)):
            repo = Repository(Registry(remote.host, options, remote.repository), remote.repository)
            downloads = Downloads(self.root.downloads)
            source = RegistrySource(repo, remote.reference, local, want, downloads, parallel, self.blobs.path)
            try:
                notes, _loaded = self._add_from(txn, source, progress)
            except (RegistryError, KeyboardInterrupt):
                raise  # stopped on the network: what was fetched and verified stays for the next pull
            except BaseException:
                downloads.discard(source.fetched())
                raise
            downloads.discard(source.fetched())  # in the store now
            Places(self.root.places).note(remote.host, remote.repository, source.blobs())
        return local or str(remote), source.digest, notes

    def push(
        self, ref: str, progress: Progress | None = None, options: RemoteOptions | None = None, parallel: int = 3
    ) -> tuple[str, str]:
        """Push the local image tagged ``[host[:port]/]repo[:tag]`` to that registry; returns (the tag,
        the manifest's digest). Layers go as they are stored (compressed or not), ``parallel`` at a
        time; see ``upload.py`` for what is skipped, mounted and resumed."""
        from .places import Places
        from .registry import Registry, parse_remote
        from .upload import Blob, Pusher, Sessions

        options = options or _default_options()
        remote = parse_remote(ref)
        if remote.digest is not None:
            raise BadInput(f"{ref}: push takes a tag, not a digest")
        tag = remote.tag or "latest"
        image_id = self.images.resolve(ref)
        config = self.blobs.read(image_id)
        layers = []
        for chain in self.images.chain(image_id):
            info = self.layers.info(chain)
            layers.append(
                Blob(
                    info.blob,
                    info.blob_size,
                    info.media_type,
                    partial(self.blobs.open, info.blob),
                    hex_of(info.blob)[:12],
                )
            )
        with _naming(str(remote)):
            registry = Registry(remote.host, options, remote.repository)
            pusher = Pusher(
                registry,
                remote.repository,
                Sessions(self.root.uploads),
                Places(self.root.places),
                parallel,
                _locked(progress),
            )
            return tag, pusher.push(tag, layers, config)

    def _add_from(self, txn: Transaction, source: Source, progress: Progress | None) -> tuple[list[str], list[str]]:
        """Stage and publish every image ``source`` holds (load and pull). Returns notes on re-pointed
        tags, and Docker's ``Loaded image`` lines."""
        workers: ThreadPoolExecutor | None = None
        try:
            plans = plan(source)
            staged: dict[str, StagedLayer] = {}
            learnt: dict[str, str] = {}  # member -> diff_id, for layers without a known diff_id
            checked: set[str] = set()  # members of layers the store has, verified
            configs: list[StagedBlob] = []
            records: list[tuple[str, str | None]] = []
            ids: list[str] = []
            ahead = source.prefetch(self._missing(plans), progress)
            # layers fetched ahead are staged as they arrive, a thread each: decompressing, hashing and
            # writing let go of the GIL, so layers extract side by side
            if ahead:
                workers = ThreadPoolExecutor(max_workers=len(ahead), thread_name_prefix="stage")
            pending: dict[str, Future[StagedLayer]] = {}
            for p in plans:
                diff_ids: list[str] = []
                parent: str | None = None
                for ref in p.layers:
                    where = f"{source.where}: {ref.member}"
                    diff_id = ref.diff_id or learnt.get(ref.member)
                    if diff_id is None:
                        diff_id = learnt[ref.member] = diff_id_of(source.open(ref.member), where)
                    chain = chain_id(parent, diff_id)
                    if chain in pending:
                        pass
                    elif (
                        chain not in staged
                        and self.layers.exists(chain)
                        and source.check_present
                        and ref.member not in {*learnt, *checked}
                    ):
                        with source.open(ref.member) as raw:  # here already: the archive's copy is checked all the same
                            self.layers.verify(raw, where, diff_id, ref.blob_digest)
                        checked.add(ref.member)
                    elif chain not in staged and not self.layers.exists(chain):
                        stage = partial(
                            self._stage_member,
                            txn,
                            source,
                            ref.member,
                            parent,
                            where,
                            diff_id,
                            ref.blob_digest,
                            None if ref.member in ahead else progress,
                        )
                        if workers is not None and ref.member in ahead:
                            pending[chain] = workers.submit(stage)
                        else:
                            staged[chain] = stage()
                    diff_ids.append(diff_id)
                    parent = chain
                config = p.config if p.config is not None else p.make_config(diff_ids)  # type: ignore[misc]
                image_id = sha256_bytes(config)
                parent_id = ids[p.parent_index] if p.parent_index is not None else p.parent_id
                if parent_id and not (parent_id in ids or self.images.exists(parent_id)):
                    parent_id = None  # Docker drops a Parent that is not loaded
                ids.append(image_id)
                if not self.blobs.exists(image_id):  # (a pull of an image that is here stages nothing)
                    configs.append(self.blobs.stage_bytes(txn, config))
                records.append((image_id, parent_id))
            staged.update((chain, job.result()) for chain, job in pending.items())  # the first failure, in order
        finally:
            source.close()  # stops what is still fetching: a stage waiting for it ends
            if workers is not None:
                workers.shutdown(wait=True, cancel_futures=True)
        tags = [(t, ids[i]) for i, p in enumerate(plans) for t in p.tags]
        notes = self._publish(txn, list(staged.values()), configs, records, tags)
        parents = {p.parent_index for p in plans}
        loaded = [f"Loaded image: {t}" for t, _ in tags]
        loaded += [f"Loaded image ID: {ids[i]}" for i, p in enumerate(plans) if not p.tags and i not in parents]
        return notes, loaded

    def _stage_member(
        self,
        txn: Transaction,
        source: Source,
        member: str,
        parent: str | None,
        where: str,
        diff_id: str,
        blob_digest: str | None,
        progress: Progress | None,
    ) -> StagedLayer:
        kept = source.kept(member) if blob_digest is not None else None  # a pull's download
        with source.open(member) as raw:
            counter = (
                None
                if progress is None
                else _Counter(progress, source.size(member), hex_of(blob_digest or diff_id)[:12])
            )
            return self.layers.stage(
                txn,
                raw,
                parent=parent,
                where=where,
                diff_id=diff_id,
                blob_digest=blob_digest,
                progress=counter,
                kept=kept,
            )

    def _missing(self, plans: list[ImagePlan]) -> list[str]:
        """Members of the layers that will be staged (known diff_ids whose chain is not here), in order."""
        out: list[str] = []
        for p in plans:
            parent: str | None = None
            for ref in p.layers:
                if ref.diff_id is None:
                    break
                parent = chain_id(parent, ref.diff_id)
                if not self.layers.exists(parent) and ref.member not in out:
                    out.append(ref.member)
        return out

    def import_rootfs(
        self,
        src: str,
        ref: str | None,
        changes: list[str] = [],
        stdin: BinaryIO | None = None,
        message: str | None = None,
        progress: Progress | None = None,
    ) -> str:
        """One-layer image from a rootfs tar (maybe compressed), a directory, or ``-`` (stdin)."""
        tag = "{}:{}".format(*parse_ref(ref)) if ref else None
        settings = apply_changes({}, changes)
        if src != "-" and not os.path.exists(src):
            raise BadInput(f"{src}: no such file or directory")
        with self.root.writer() as txn, _naming("stdin" if src == "-" else src):
            if src != "-" and os.path.isdir(src):
                layer = self._stage_tree(txn, src, None, progress)
            else:
                raw = stdin if src == "-" else open(src, "rb")
                assert raw is not None
                try:
                    total = os.fstat(raw.fileno()).st_size if src != "-" else 0
                    layer = self.layers.stage(
                        txn, raw, parent=None, where=src, progress=_Counter(progress, total, "import")
                    )
                finally:
                    if raw is not stdin:
                        raw.close()
            created = now()
            config = {
                "architecture": _arch(),
                "os": "linux",
                "created": created,
                "config": settings,
                "rootfs": {"type": "layers", "diff_ids": [layer.info.diff_id]},
                "history": [{"created": created, "comment": message or f"Imported from {src}"}],
            }
            return self._add_image(txn, layer, config, None, tag)

    def _stage_tree(
        self,
        txn: Transaction,
        tree: str,
        parent: str | None,
        progress: Progress | None = None,
        data_of: DataOf | None = None,
        private: Collection[str] = (),
    ) -> StagedLayer:
        """A directory tree as a layer: written as a reproducible tar, then staged like any tar
        (``data_of``, ``private``: see ``tarwrite``)."""
        tar_path = txn.new_path("layer.tar")
        with open(tar_path, "wb") as f:
            write_tree(tree, f, data_of, private)
        with open(tar_path, "rb") as raw:
            return self.layers.stage(
                txn, raw, parent=parent, where=tree, progress=_Counter(progress, os.path.getsize(tar_path), "import")
            )

    def _add_image(
        self, txn: Transaction, layer: StagedLayer, config: dict[str, Any], parent: str | None, tag: str | None
    ) -> str:
        """Publish one new image: its layer (unless that chain id exists), config, record and tag."""
        blob = self.blobs.stage_bytes(txn, json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
        fresh = [] if self.layers.exists(layer.info.chain_id) else [layer]
        self._publish(txn, fresh, [blob], [(blob.digest, parent)], [(tag, blob.digest)] if tag else [])
        return blob.digest

    def _is_tag(self, ref: str) -> bool:
        """True when ``ref`` names a tag rather than an image id."""
        try:
            name, tag = parse_ref(ref)
        except StoreError:
            return False
        return f"{name}:{tag}" in self.images.tags()

    def commit(
        self,
        parent: str,
        tree: str,
        ref: str | None,
        created_by: str,
        comment: str = "",
        author: str = "",
        changes: list[str] = [],
        data_of: DataOf | None = None,
        private: Collection[str] = (),
    ) -> str:
        """A new image: ``parent`` plus one layer made from ``tree`` (a container's upper dir, whose
        whiteouts are already in OCI spelling; ``data_of`` and ``private`` say where its files keep
        their data, see ``tarwrite``). The layer tar is reproducible, so the same tree gives the same
        digest; the history entry records ``created_by`` and the layer's content size."""
        tag = "{}:{}".format(*parse_ref(ref)) if ref else None
        base = self.images.config(parent)
        settings = apply_changes(base.get("config") or {}, changes)
        with self.root.writer() as txn, _naming(tree):
            chain = self.images.chain(parent)
            layer = self._stage_tree(txn, tree, chain[-1] if chain else None, data_of=data_of, private=private)
            created = now()
            history = list(base.get("history") or [{"created": base.get("created", "")} for _ in chain])
            entry = {"created": created, "created_by": created_by}
            if comment:
                entry["comment"] = comment
            if author:
                entry["author"] = author
            config = {
                **base,
                "created": created,
                "config": settings,
                "rootfs": {"type": "layers", "diff_ids": [*base["rootfs"]["diff_ids"], layer.info.diff_id]},
                "history": [*history, entry],
            }
            if author:
                config["author"] = author
            return self._add_image(txn, layer, config, parent, tag)

    def add_step(
        self,
        parent: str | None,
        config: dict[str, Any],
        tree: str | None,
        data_of: DataOf | None = None,
        private: Collection[str] = (),
    ) -> str:
        """One build step's image, untagged: ``config`` is the whole image config but its rootfs
        (its history ends with the step's entry), on ``parent`` (None: on nothing, as FROM scratch),
        plus a layer made from ``tree`` (an upper dir, OCI whiteouts) unless there is none or it
        holds nothing; then the entry says ``empty_layer``, as Docker's builder writes a step that
        changed no file. The record names ``parent``: ``history`` shows the step's id, and the
        builder's cache looks for it among the parent's children."""
        config = json.loads(json.dumps(config))
        with self.root.writer() as txn, _naming(tree or "build step"):
            chain = self.images.chain(parent) if parent else []
            diff_ids = list(self.images.config(parent)["rootfs"]["diff_ids"]) if parent else []
            layers = []
            if tree is not None and os.listdir(tree):
                layer = self._stage_tree(txn, tree, chain[-1] if chain else None, data_of=data_of, private=private)
                diff_ids.append(layer.info.diff_id)
                if not self.layers.exists(layer.info.chain_id):
                    layers.append(layer)
            else:
                config["history"][-1]["empty_layer"] = True
            config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
            blob = self.blobs.stage_bytes(txn, json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
            self._publish(txn, layers, [blob], [(blob.digest, parent)], [])
            return blob.digest

    # -- moving images out ------------------------------------------------------------------------
    def save_items(self, refs: list[str]) -> list[SaveItem]:
        """Resolve what ``save`` will write, before anything is written (bad refs change nothing)."""
        repos = self.images.repositories()
        items: dict[str, SaveItem] = {}
        for ref in refs:
            if ":" not in ref and "@" not in ref and ref in repos:  # a bare repo: all its tags
                pairs = sorted(repos[ref].items())
            else:
                image_id = self.images.resolve(ref)
                pairs = [("{}:{}".format(*parse_ref(ref)) if self._is_tag(ref) else "", image_id)]
            for tag, image_id in pairs:
                item = items.setdefault(image_id, SaveItem(image_id, [], self.images.chain(image_id)))
                if tag and tag not in item.tags:
                    item.tags.append(tag)
        return list(items.values())

    def save(self, items: list[SaveItem], out: BinaryIO, progress: Progress | None = None) -> None:
        total = sum(self.layers.info(c).tar_size for item in items for c in set(item.chain))
        write_archive(items, self.root, self.layers, self.blobs.read, out, _Counter(progress, total, "save"))

    # -- tags and removal -------------------------------------------------------------------------
    def tag(self, source: str, target: str) -> None:
        parse_ref(target)
        with self.root.writer():
            self.images.set_tag(target, self.images.resolve(source))

    def rmi(
        self, ref: str, force: bool = False, holders: Callable[[str], list[str]] | None = None, prune: bool = True
    ) -> list[str]:
        """Docker's rmi for one reference; returns its ``Untagged:``/``Deleted:`` lines.

        ``holders(image_id)`` names users of the image outside the store (containers): an image in use
        is refused, or with ``force`` only untagged, so that no container loses its layers. ``prune``:
        its untagged parents that nothing else holds go too (Docker's rmi; a failed build undoing its
        own steps does not want that: a parent may be an earlier build's).
        """
        with self.root.writer() as txn, self.root.collecting():
            image_id = self.images.resolve(ref)
            tags = self.images.tags_of(image_id)
            by_tag = self._is_tag(ref)
            full = "{}:{}".format(*parse_ref(ref)) if by_tag else ""
            if by_tag and len(tags) > 1:
                self.images.untag(full)
                return [f"Untagged: {full}"]
            short = hex_of(image_id)[:12]
            if not by_tag and len(tags) > 1 and not force:
                raise Conflict(
                    f"conflict: unable to delete {short} (must be forced) - "
                    "image is referenced in multiple repositories"
                )
            users = holders(image_id) if holders else []
            if users and not force:
                raise Conflict(f"conflict: unable to remove {ref} (must force) - image is being used by {users[0]}")
            children = self.images.children(image_id)
            if children and not by_tag:
                raise Conflict(
                    f"conflict: unable to delete {short} (cannot be forced) - image has dependent child images"
                )
            out = []
            for t in [full] if by_tag else tags:
                self.images.untag(t)
                out.append(f"Untagged: {t}")
            if children or users:
                return out  # the image stays, untagged, for its children or the containers using it
            parent = self.images.record(image_id).parent
            self.images.remove_record(image_id)
            out.append(f"Deleted: {image_id}")
            if prune:  # then its parents that nothing else holds (a build's steps), as Docker prunes them
                out.extend(f"Deleted: {p}" for p in self.images.remove_unheld_parents(parent, holders))
            layers, _blobs = self.images.gc(txn)
            out.extend(f"Deleted: {c}" for c in layers)
            return out

    # -- views (store/views.py) ------------------------------------------------------------------
    def history(self, ref: str) -> list[HistoryRow]:
        """Newest first, like ``docker history``."""
        return views.history(self, ref)

    def tree(self) -> list[TreeNode]:
        return views.tree(self)

    def inspect_image(self, ref: str) -> dict[str, Any]:
        return views.inspect_image(self, ref)

    def info(self) -> dict[str, Any]:
        return {
            "Root": self.root.path,
            "Images": len(self.images.ids()),
            "Tags": len(self.images.tags()),
            "Layers": len(self.layers.all()),
            "Blobs": len(self.blobs.all()),
        }

    def check(self) -> list[str]:
        """Verify every blob, layer chain, image and tag. Returns the problems found."""
        return views.check(self)

    def leftovers(self) -> list[str]:
        """What writers that died left staged in ``tmp/``, and what stopped pulls left in
        ``downloads/``: not damage (nothing refers to it), space the next writer or pull frees."""
        from .download import Downloads

        out = [
            f"tmp/{name}: {size} bytes staged by a writer that died (the next writer removes them)"
            for name, size in self.root.leftovers()
        ]
        out += [
            f"downloads/sha256/{name}: {size} bytes fetched by a pull that stopped (the next pull of it "
            "goes on from there)"
            for name, size in Downloads(self.root.downloads).kept()
        ]
        return out


def _default_options() -> RemoteOptions:
    from .registry import RemoteOptions

    return RemoteOptions()


def _locked(progress: Progress | None) -> Progress | None:
    """``progress`` made safe to call from the transfer threads (one terminal, many threads)."""
    if progress is None:
        return None
    lock = threading.Lock()

    def report(item: str, done: int, total: int) -> None:
        with lock:
            progress(item, done, total)

    return report


def _failpoint(name: str) -> None:
    """Crash tests: die here, as a SIGKILL would, when STRATA_FAILPOINT names this point."""
    if os.environ.get("STRATA_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def _naming(where: str) -> Iterator[None]:
    """Make sure an error about an input names that input (one line: the file, then the reason)."""
    try:
        yield
    except StoreError as e:
        if where in str(e):
            raise
        raise type(e)(f"{where}: {e}") from None


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
