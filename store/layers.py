"""Layer dirs, one per chain id: ``layers/<chain hex>/{diff/, parent, layer.json}``.

``diff/`` is the layer's content exactly as its tar says, whiteouts in OCI spelling: a valid lower dir
for the union filesystem. ``parent`` lists the ancestors' chain ids, nearest first, one a line (like
Docker's old ``aufs/layers/<id>``), so ``cat`` shows the chain. ``layer.json`` records the diff_id,
the blob the layer came from, its content size and its uncompressed tar size.

A layer is extracted once: a chain id already present is never staged again, and the same diff_id on
another parent is another chain id (another layer dir), as in Docker.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import BinaryIO

from .blobs import Blobs, StagedBlob, TeeHash
from .compression import decompressing
from .digest import HashingReader, chain_id, hex_of, is_digest
from .errors import BadInput, DigestMismatch, NotFound
from .extract import extract
from .root import Root, Transaction, read_json, remove_tree, write_json
from .tarstream import TarReader

MEDIA_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
_MEDIA_BY_COMPRESSION = {"none": MEDIA_TAR, "gzip": MEDIA_GZIP, "zstd": MEDIA_ZSTD}


@dataclass(frozen=True)
class LayerInfo:
    chain_id: str
    diff_id: str
    parent: str | None  # parent chain id
    size: int  # bytes of regular-file content (what `history` and `images` show)
    tar_size: int  # length of the uncompressed tar (its sha256 is diff_id)
    blob: str  # digest of the blob this layer was read from
    media_type: str
    blob_size: int


@dataclass
class StagedLayer:
    info: LayerInfo
    dir: str
    blob: StagedBlob


class Layers:
    def __init__(self, root: Root, blobs: Blobs) -> None:
        self.root = root
        self.blobs = blobs

    def dir(self, chain_id: str) -> str:
        return os.path.join(self.root.layers, hex_of(chain_id))

    def diff_dir(self, chain_id: str) -> str:
        return os.path.join(self.dir(chain_id), "diff")

    def exists(self, chain_id: str) -> bool:
        return os.path.exists(os.path.join(self.dir(chain_id), "layer.json"))

    def info(self, chain_id: str) -> LayerInfo:
        try:
            return LayerInfo(**read_json(os.path.join(self.dir(chain_id), "layer.json")))
        except FileNotFoundError:
            raise NotFound(f"layer {chain_id} is missing from the store") from None

    def all(self) -> list[str]:
        try:
            names = os.listdir(self.root.layers)
        except FileNotFoundError:
            return []
        return sorted("sha256:" + n for n in names if len(n) == 64)

    def ancestors(self, chain_id: str) -> list[str]:
        """Chain ids below ``chain_id``, nearest first."""
        out = []
        parent = self.info(chain_id).parent
        while parent is not None:
            out.append(parent)
            parent = self.info(parent).parent
        return out

    @staticmethod
    def verify(raw: BinaryIO, where: str, diff_id: str, blob_digest: str | None = None) -> None:
        """Check, without keeping anything, that the layer blob ``raw`` is what it claims (its
        digest, its content's diff_id): an archive's copy of a layer the store has already must not
        pass unread. DigestMismatch if it is not."""
        blob = HashingReader(raw)
        _compression, plain = decompressing(blob, where)  # type: ignore[arg-type]
        content = HashingReader(plain)
        content.drain()
        blob.drain()
        if blob_digest is not None and blob.digest != blob_digest:
            raise DigestMismatch(f"{where}: blob hashes to {blob.digest}, expected {blob_digest}")
        if content.digest != diff_id:
            raise DigestMismatch(f"{where}: layer content hashes to {content.digest}, expected diff_id {diff_id}")

    def stage(
        self,
        txn: Transaction,
        raw: BinaryIO,
        *,
        parent: str | None,
        where: str,
        diff_id: str | None = None,
        blob_digest: str | None = None,
        progress: Callable[[int], None] | None = None,
        kept: Callable[[], str] | None = None,
    ) -> StagedLayer:
        """Copy ``raw`` (a layer blob) into the transaction and extract it, in one pass.

        ``diff_id`` and ``blob_digest``, when known, are verified; a mismatch raises DigestMismatch
        and the staged work is dropped with the transaction. ``kept``: gives a file of this store's
        root holding the blob, checked against ``blob_digest`` (a pull's download, which ``raw`` reads
        as it comes): once ``raw`` is read, that file is staged by a hard link rather than a copy.
        """
        blob_path = txn.new_path("layer-blob")
        layer_dir = txn.new_path("layer")
        os.makedirs(os.path.join(layer_dir, "diff"))
        if kept is not None and blob_digest is None:
            raise ValueError("a kept blob is one checked against its digest")
        fd = -1 if kept is not None else os.open(blob_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            tee = TeeHash(raw, fd, progress)  # (what is extracted is hashed here, whoever checked the file)
            try:
                compression, plain = decompressing(tee, where)  # type: ignore[arg-type]
                media_type = _MEDIA_BY_COMPRESSION.get(compression)
                if media_type is None:
                    raise BadInput(f"{where}: {compression} layers are not supported (gzip, zstd or none)")
                # An uncompressed blob is its own tar: the tee's hash is the diff_id, no second hash.
                hashed = HashingReader(plain) if compression != "none" else None
                reader = TarReader(hashed or plain, where)  # type: ignore[arg-type]
                size = extract(reader, os.path.join(layer_dir, "diff"), where)
                if hashed:
                    hashed.drain()
                tee.drain()  # bytes after the compressed stream still belong to the blob
            except BadInput:
                if kept is not None:
                    kept()  # a download that does not hash to its digest says so, rather than the tar it spoilt
                raise
            if kept is not None:
                os.link(kept(), blob_path)
        finally:
            if fd >= 0:
                os.close(fd)
        if blob_digest is not None and tee.digest != blob_digest:
            raise DigestMismatch(f"{where}: blob hashes to {tee.digest}, expected {blob_digest}")
        actual_diff = hashed.digest if hashed else tee.digest
        if diff_id is not None and actual_diff != diff_id:
            raise DigestMismatch(f"{where}: layer content hashes to {actual_diff}, expected diff_id {diff_id}")
        chain = chain_id(parent, actual_diff)
        info = LayerInfo(
            chain_id=chain,
            diff_id=actual_diff,
            parent=parent,
            size=size,
            tar_size=hashed.count if hashed else tee.size,
            blob=tee.digest,
            media_type=media_type,
            blob_size=tee.size,
        )
        return StagedLayer(info, layer_dir, StagedBlob(blob_path, tee.digest, tee.size))

    def publish(self, txn: Transaction, staged: StagedLayer) -> None:
        """Blob first, then the layer dir by one rename; a present chain id is left as it is."""
        self.blobs.publish(txn, staged.blob)
        info = staged.info
        ancestors = [info.parent] + self.ancestors(info.parent) if info.parent else []
        with open(os.path.join(staged.dir, "parent"), "w") as f:
            f.write("".join(a + "\n" for a in ancestors))
        write_json(os.path.join(staged.dir, "layer.json"), asdict(info))
        txn.publish(staged.dir, self.dir(info.chain_id))

    def remove(self, txn: Transaction, chain_id: str) -> None:
        """Move the layer dir into the transaction (one rename: it is gone at once), then delete."""
        src = self.dir(chain_id)
        if os.path.exists(src):
            dst = txn.new_path("removing")
            os.rename(src, dst)
            remove_tree(dst)

    def check_chain(self, chain: str) -> list[str]:
        """Problems with one layer dir, as sentences (empty when sound)."""
        problems = []
        try:
            info = self.info(chain)
        except (NotFound, ValueError, TypeError) as e:
            return [f"layer {chain}: unreadable layer.json ({e})"]
        if not is_digest(info.diff_id) or not os.path.isdir(self.diff_dir(chain)):
            problems.append(f"layer {chain}: diff dir or diff_id missing")
        if chain_id(info.parent, info.diff_id) != chain:
            problems.append(f"layer {chain}: chain id does not match parent + diff_id")
        if info.parent and not self.exists(info.parent):
            problems.append(f"layer {chain}: parent layer {info.parent} is missing")
        if not self.blobs.exists(info.blob):
            problems.append(f"layer {chain}: blob {info.blob} is missing")
        return problems
