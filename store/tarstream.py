"""A strict, streaming tar reader (ustar, GNU long names, PAX) for untrusted layers and archives.

Python's ``tarfile`` treats a corrupt header after the first one as the end of the archive and so
silently drops the rest of a damaged layer. This reader checks every header's checksum, requires the
end-of-archive marker, rejects data after it and reports truncation, naming the entry it was reading.
It never seeks, so it works on pipes and on decompressing streams.

Caveats: GNU sparse entries, multi-volume archives and PAX sparse maps are rejected (OCI layer.md:
layers SHOULD NOT use sparse files).
"""

from __future__ import annotations

import base64
import os
import stat
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from .errors import BadInput

BLOCK = 512
_CHUNK = 1 << 20

REGULAR, HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIR, FIFO = (
    "file",
    "hardlink",
    "symlink",
    "char",
    "block",
    "dir",
    "fifo",
)
_TYPES = {
    b"0": REGULAR,
    b"\0": REGULAR,
    b"7": REGULAR,
    b"1": HARDLINK,
    b"2": SYMLINK,
    b"3": CHAR,
    b"4": BLOCKDEV,
    b"5": DIR,
    b"6": FIFO,
}
_FMT_BITS = {
    REGULAR: stat.S_IFREG,
    HARDLINK: stat.S_IFREG,
    SYMLINK: stat.S_IFLNK,
    CHAR: stat.S_IFCHR,
    BLOCKDEV: stat.S_IFBLK,
    DIR: stat.S_IFDIR,
    FIFO: stat.S_IFIFO,
}


@dataclass
class TarEntry:
    name: str
    type: str
    mode: int  # permission bits incl. setuid/setgid/sticky, no file-type bits
    uid: int
    gid: int
    size: int
    mtime: float
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    uname: str = ""
    gname: str = ""
    xattrs: dict[str, bytes] = field(default_factory=dict)

    @property
    def st_mode(self) -> int:
        return _FMT_BITS[self.type] | self.mode


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _cstr(field_: bytes) -> bytes:
    return field_.split(b"\0", 1)[0]


def _number(field_: bytes, what: str) -> int:
    if field_ and field_[0] & 0x80:  # GNU base-256
        value = int.from_bytes(field_[1:], "big")
        if field_[0] == 0xFF:
            value -= 1 << (8 * (len(field_) - 1))
        return value
    text = field_.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise BadInput(f"bad {what} field {field_!r}") from None


class TarReader:
    """Iterate a tar stream: ``for entry in reader: ... reader.read(n) / reader.copy_to(fd)``.

    Content not read by the caller is skipped when the iteration advances. After the loop ends
    normally the archive was complete: every header valid, the end marker present, nothing after it.
    ``where`` names the archive in error messages.
    """

    def __init__(self, stream: BinaryIO, where: str, seekable: bool = False) -> None:
        self._stream = stream
        self._seekable = seekable  # skip content by seeking (indexing a file); truncation is the caller's check
        self._where = where
        self._remaining = 0  # content bytes of the current entry not yet read
        self._padding = 0
        self._current = ""
        self._globals: dict[str, bytes] = {}
        self.pos = 0  # bytes consumed from the stream; after a yield, the entry's content offset

    # -- raw reading ------------------------------------------------------------------------------
    def _fail(self, why: str) -> BadInput:
        at = f" (at entry {self._current!r})" if self._current else ""
        return BadInput(f"{self._where}: {why}{at}")

    def _read_exact(self, n: int) -> bytes:
        parts = []
        while n:
            data = self._stream.read(n)
            if not data:
                raise self._fail("truncated tar stream")
            parts.append(data)
            n -= len(data)
            self.pos += len(data)
        return b"".join(parts)

    def _skip(self, n: int) -> None:
        if self._seekable and n:
            self._stream.seek(n, os.SEEK_CUR)
            self.pos += n
            return
        while n:
            data = self._stream.read(min(n, _CHUNK))
            if not data:
                raise self._fail("truncated tar stream")
            n -= len(data)
            self.pos += len(data)

    # -- content of the current entry -------------------------------------------------------------
    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self._remaining:
            n = self._remaining
        data = self._read_exact(n) if n else b""
        self._remaining -= len(data)
        return data

    def copy_to(self, fd: int) -> int:
        """Write the rest of the current entry's content to ``fd``; return the byte count."""
        total = 0
        while self._remaining:
            data = self._stream.read(min(self._remaining, _CHUNK))
            if not data:
                raise self._fail("truncated tar stream")
            self._remaining -= len(data)
            self.pos += len(data)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            total += len(data)
        return total

    def _finish_entry(self) -> None:
        self._skip(self._remaining + self._padding)
        self._remaining = self._padding = 0

    # -- headers ----------------------------------------------------------------------------------
    def _header(self) -> bytes | None:
        block = self._stream.read(BLOCK)
        if not block:
            raise self._fail("no end-of-archive marker (truncated tar)")
        self.pos += len(block)
        if len(block) < BLOCK:
            block += self._read_exact(BLOCK - len(block))
        if block == bytes(BLOCK):
            return None
        stored = _number(block[148:156], "checksum")
        unsigned = sum(block[:148]) + 256 + sum(block[156:])
        # (old tars summed signed bytes: only then is the slow sum worth making, each byte a Python int)
        if stored != unsigned and stored != unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b > 127):
            raise self._fail("corrupt tar header (checksum mismatch)")
        return block

    def _read_meta(self, size: int) -> bytes:
        if size > 16 << 20:
            raise self._fail(f"extended header of {size} bytes is too large")
        data = self._read_exact(size)
        self._skip(-size % BLOCK)
        return data

    def _parse_pax(self, data: bytes) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        pos = 0
        while pos < len(data):
            space = data.find(b" ", pos)
            try:
                length = int(data[pos:space])
            except ValueError:
                raise self._fail("malformed PAX header") from None
            record = data[space + 1 : pos + length]
            if length <= 0 or pos + length > len(data) or not record.endswith(b"\n") or b"=" not in record:
                raise self._fail("malformed PAX header")
            key, value = record[:-1].split(b"=", 1)
            out[key.decode("utf-8", "surrogateescape")] = value
            pos += length
        return out

    def _end(self) -> None:
        # After the first zero block only zero padding may follow (to the end of the stream).
        while True:
            data = self._stream.read(_CHUNK)
            if not data:
                return
            if data.count(0) != len(data):
                raise self._fail("data after the end-of-archive marker (corrupt tar header?)")

    def __iter__(self) -> Iterator[TarEntry]:
        pax: dict[str, bytes] = {}
        longname: bytes | None = None
        longlink: bytes | None = None
        while True:
            self._finish_entry()
            block = self._header()
            if block is None:
                if pax or longname is not None or longlink is not None:
                    raise self._fail("extended header with no entry after it")
                self._end()
                return
            flag = block[156:157]
            size = _number(block[124:136], "size")
            if size < 0:
                raise self._fail("negative size")
            if flag == b"x":
                pax.update(self._parse_pax(self._read_meta(size)))
                continue
            if flag == b"g":
                self._globals.update(self._parse_pax(self._read_meta(size)))
                continue
            if flag == b"L":
                longname = _cstr(self._read_meta(size))
                continue
            if flag == b"K":
                longlink = _cstr(self._read_meta(size))
                continue
            kind = _TYPES.get(flag)
            if kind is None:
                raise self._fail(f"unsupported tar entry type {flag!r}")
            entry = self._entry(block, kind, size, {**self._globals, **pax}, longname, longlink)
            pax, longname, longlink = {}, None, None
            self._current = entry.name
            # Like Go's archive/tar, only regular files carry content; other types are header-only.
            if kind != REGULAR:
                entry.size = 0
            self._remaining = entry.size
            self._padding = -entry.size % BLOCK
            yield entry

    def _entry(
        self,
        block: bytes,
        kind: str,
        size: int,
        pax: dict[str, bytes],
        longname: bytes | None,
        longlink: bytes | None,
    ) -> TarEntry:
        if any(k.startswith("GNU.sparse") for k in pax):
            raise self._fail("sparse tar entries are not supported")
        name = _cstr(block[0:100])
        if block[257:263] == b"ustar\x00":
            prefix = _cstr(block[345:500])
            if prefix:
                name = prefix + b"/" + name
        if longname is not None:
            name = longname
        if "path" in pax:
            name = pax["path"]
        link = longlink if longlink is not None else _cstr(block[157:257])
        if "linkpath" in pax:
            link = pax["linkpath"]

        def num(key: str, raw: bytes, what: str) -> int:
            if key in pax:
                try:
                    return int(pax[key])
                except ValueError:
                    raise self._fail(f"bad PAX {key}") from None
            return _number(raw, what)

        if "size" in pax:
            size = num("size", b"", "size")
        mtime: float
        try:
            mtime = float(pax["mtime"]) if "mtime" in pax else float(_number(block[136:148], "mtime"))
        except ValueError:
            raise self._fail("bad PAX mtime") from None
        xattrs: dict[str, bytes] = {}
        for key, value in pax.items():
            if key.startswith("SCHILY.xattr."):
                xattrs[key[len("SCHILY.xattr.") :]] = value
            elif key.startswith("LIBARCHIVE.xattr."):
                xname = urllib.parse.unquote(key[len("LIBARCHIVE.xattr.") :])
                xattrs.setdefault(xname, base64.b64decode(value + b"=" * (-len(value) % 4)))
        return TarEntry(
            name=_decode(name),
            type=kind,
            mode=_number(block[100:108], "mode") & 0o7777,
            uid=num("uid", block[108:116], "uid"),
            gid=num("gid", block[116:124], "gid"),
            size=size,
            mtime=mtime,
            linkname=_decode(link),
            devmajor=_number(block[329:337], "devmajor") if kind in (CHAR, BLOCKDEV) else 0,
            devminor=_number(block[337:345], "devminor") if kind in (CHAR, BLOCKDEV) else 0,
            uname=_decode(pax.get("uname", _cstr(block[265:297]))),
            gname=_decode(pax.get("gname", _cstr(block[297:329]))),
            xattrs=xattrs,
        )
