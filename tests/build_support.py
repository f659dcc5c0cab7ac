"""What the build tests share: an image's whole tree read from an archive (``strata save`` or
``buildah push oci:``), layer over layer as a runtime would apply them, and a buildah with a private
store (its own root, runroot, vfs driver, chroot isolation) that a test removes whole."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tarfile
from dataclasses import dataclass

WH = ".wh."
OPQ = ".wh..wh..opq"


@dataclass(frozen=True)
class Entry:
    kind: str  # file dir symlink hardlink fifo char block
    mode: int
    uid: int
    gid: int
    size: int
    digest: str  # of a file's content
    link: str


def _kind(m: tarfile.TarInfo) -> str:
    return {
        tarfile.REGTYPE: "file",
        tarfile.AREGTYPE: "file",
        tarfile.DIRTYPE: "dir",
        tarfile.SYMTYPE: "symlink",
        tarfile.LNKTYPE: "hardlink",
        tarfile.FIFOTYPE: "fifo",
        tarfile.CHRTYPE: "char",
        tarfile.BLKTYPE: "block",
    }[m.type]


def layers_of(layout: str) -> tuple[dict, list[str]]:
    """(image config, layer blob paths bottom first) of an OCI layout directory."""
    index = json.load(open(os.path.join(layout, "index.json")))
    digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.load(open(os.path.join(layout, "blobs", "sha256", digest)))
    config = json.load(open(os.path.join(layout, "blobs", "sha256", manifest["config"]["digest"].split(":")[1])))
    return config, [
        os.path.join(layout, "blobs", "sha256", layer["digest"].split(":")[1]) for layer in manifest["layers"]
    ]


def _open(path: str) -> tarfile.TarFile:
    with open(path, "rb") as f:
        magic = f.read(2)
    return tarfile.open(fileobj=gzip.open(path) if magic == b"\x1f\x8b" else open(path, "rb"), mode="r|")


def layer_entries(path: str) -> list[tuple[str, Entry]]:
    out = []
    with _open(path) as tar:
        for m in tar:
            digest = ""
            if m.isreg():
                f = tar.extractfile(m)
                digest = hashlib.sha256(f.read() if f else b"").hexdigest()
            name = m.name.rstrip("/").removeprefix("./")
            out.append(
                (name, Entry(_kind(m), m.mode & 0o7777, m.uid, m.gid, m.size if m.isreg() else 0, digest, m.linkname))
            )
    return out


def flatten(blobs: list[str]) -> dict[str, Entry]:
    """The tree the layers make, whiteouts applied (a hard link shows as the file it names)."""
    tree: dict[str, Entry] = {}
    for blob in blobs:
        entries = layer_entries(blob)
        for name, entry in entries:
            base = os.path.basename(name)
            parent = os.path.dirname(name)
            if base == OPQ:
                for path in [p for p in tree if p.startswith(parent + "/" if parent else "")]:
                    if path != parent:
                        del tree[path]
                continue
            if base.startswith(WH):
                gone = os.path.join(parent, base[len(WH) :])
                for path in [p for p in tree if p == gone or p.startswith(gone + "/")]:
                    del tree[path]
                continue
            if entry.kind != "dir" or tree.get(name, entry).kind != "dir":
                for path in [p for p in tree if p.startswith(name + "/")]:
                    del tree[path]
            tree[name] = tree[entry.link] if entry.kind == "hardlink" else entry
    return tree


def whiteouts(blobs: list[str]) -> set[str]:
    """Every path a layer deletes (its whiteout files)."""
    out = set()
    for blob in blobs:
        for name, _ in layer_entries(blob):
            base = os.path.basename(name)
            if base.startswith(WH) and base != OPQ:
                out.add(os.path.join(os.path.dirname(name), base[len(WH) :]))
    return out


def strata_layout(strata, root: str, image: str, into: str) -> str:
    """``strata save`` of ``image``, unpacked: its OCI layout directory."""
    archive = into + ".tar"
    strata(root, "save", "-o", archive, image)
    os.makedirs(into)
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "tar_filter"):
            tar.extractall(into, filter="tar")
        else:  # (the extraction filters came in 3.11.4: Debian 12's Python is 3.11.2)
            tar.extractall(into)
    os.unlink(archive)
    return into


class Buildah:
    """buildah with a store of its own under ``base`` (removed by ``close``)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.args = [
            "buildah",
            "--root",
            os.path.join(base, "root"),
            "--runroot",
            os.path.join(base, "run"),
            "--storage-driver",
            "vfs",
        ]

    def __call__(self, *args: str, cwd: str | None = None) -> str:
        proc = subprocess.run([*self.args, *args], capture_output=True, text=True, cwd=cwd, timeout=600)
        if proc.returncode:
            raise AssertionError(f"buildah {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-3000:]}")
        return proc.stdout

    def bud(self, context: str, tag: str, *extra: str) -> None:
        self(
            "bud",
            "--pull-never",
            "--isolation",
            "chroot",
            "--layers",
            "--format",
            "docker",
            "--identity-label=false",
            "-t",
            tag,
            *extra,
            context,
        )

    def layout(self, image: str, into: str) -> str:
        self("push", image, f"oci:{into}")
        return into

    def close(self) -> None:
        subprocess.run([*self.args, "rm", "--all"], capture_output=True)
        subprocess.run([*self.args, "rmi", "--all", "--force"], capture_output=True)
        for sub in ("root", "run"):  # vfs leaves plain directories; some of them read-only
            path = os.path.join(self.base, sub)
            if os.path.isdir(path):
                for top, dirs, _files in os.walk(path):
                    for d in dirs:
                        full = os.path.join(top, d)
                        if not os.path.islink(full):
                            os.chmod(full, stat.S_IMODE(os.lstat(full).st_mode) | 0o700)
                shutil.rmtree(path, ignore_errors=True)
