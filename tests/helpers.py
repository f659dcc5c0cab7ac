"""Builders for real tar files and archives, a CLI runner, and a store snapshot for 'unchanged' checks."""

from __future__ import annotations

import hashlib
import io
import json
import os
import select
import signal
import stat
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from typing import Any

import pytest

STRATA = [sys.executable, "-m", "runner"]  # the launcher, as the installed ``strata`` (through the zygote)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Result:
    code: int
    out: str
    err: str


def strata(root: str, *args: str, input: bytes | None = None, check: bool = True) -> Result:
    proc = subprocess.run(
        [*STRATA, "--root", root, *args],
        input=input,
        capture_output=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    res = Result(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))
    if check and res.code != 0:
        raise AssertionError(f"strata {' '.join(args)} failed ({res.code}): {res.err}")
    return res


def zygote_pid(directory: str) -> int | None:
    """The pid of the zygote listening in ``directory``, if one is."""
    try:
        with open(os.path.join(directory, "zygote.pid")) as f:
            pid = int(f.read())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return pid if b"runner.zygote" in cmdline and os.fsencode(directory) in cmdline else None


def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true, bounded: a wait on a condition, never a fixed sleep."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def stop_process(pid: int, timeout: float = 30.0) -> None:
    """SIGTERM a process that is not our child (a zygote) and wait until it is gone (its pidfd says)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            os.kill(pid, signal.SIGKILL)
            poller.poll(timeout * 1000)
    finally:
        os.close(pidfd)


class BuildSteps:
    """The commands of a build the tests cache (a venv, a wheel), under one deadline: ``error`` with
    the tail of a command's output where one fails or the time runs out."""

    def __init__(
        self, what: str, budget: float, error: type[Exception], log: Any = None, deadline: float | None = None
    ) -> None:
        self.what, self.budget, self.error, self.log = what, budget, error, log
        self.deadline = time.monotonic() + budget if deadline is None else deadline
        self.env = {
            k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
        }

    def run(self, cmd: list[str], env: dict[str, str] | None = None, hint: str = "") -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise self.error(f"{self.what}: out of time ({self.budget:.0f} s) before {' '.join(cmd)}")
        if self.log is not None:
            self.log(f"{self.what}:   $ " + " ".join(cmd))
        try:
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=remaining,
                env={**self.env, **(env or {})},
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise self.error(f"{self.what}: {' '.join(cmd)} took longer than the build's {self.budget:.0f} s") from None
        if proc.returncode != 0:
            raise self.error(
                f"{self.what}: {' '.join(cmd)} failed ({proc.returncode}){hint}:\n{(proc.stdout + proc.stderr)[-3000:]}"
            )


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_bytes(entries: list[dict[str, Any]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """Entries: {"name", "type": file|dir|symlink|hardlink|fifo|char, "data", "mode", "link", ...}."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for e in entries:
            info = tarfile.TarInfo(e["name"])
            kind = e.get("type", "file")
            info.type = {
                "file": tarfile.REGTYPE,
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "fifo": tarfile.FIFOTYPE,
                "char": tarfile.CHRTYPE,
                "block": tarfile.BLKTYPE,
            }[kind]
            info.mode = e.get("mode", 0o755 if kind == "dir" else 0o644)
            info.uid, info.gid = e.get("uid", 0), e.get("gid", 0)
            info.mtime = e.get("mtime", 1_600_000_000)
            info.linkname = e.get("link", "")
            info.devmajor, info.devminor = e.get("dev", (0, 0))
            if "xattrs" in e:
                info.pax_headers = {"SCHILY.xattr." + k: v for k, v in e["xattrs"].items()}
            data = e.get("data", b"")
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def config_for(diff_ids: list[str], history: list[dict[str, Any]] | None = None, **extra: Any) -> bytes:
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-02T03:04:05Z",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history
        if history is not None
        else [{"created": "2024-01-02T03:04:05Z", "created_by": f"step {i}"} for i in range(len(diff_ids))],
        **extra,
    }
    return json.dumps(config).encode()


def archive(files: dict[str, bytes | tuple[str, str]]) -> bytes:
    """A tar whose members are files (bytes) or symlinks (("symlink", target))."""
    entries = []
    for name, value in files.items():
        if isinstance(value, tuple):
            entries.append({"name": name, "type": "symlink", "link": value[1]})
        else:
            entries.append({"name": name, "data": value})
    return tar_bytes(entries, fmt=tarfile.USTAR_FORMAT)


def docker_v12_save(layers: list[bytes], tags: list[str], config: bytes | None = None) -> bytes:
    """A Docker 1.10-24 `docker save`: manifest.json, <config>.json, <dir>/layer.tar, repositories."""
    diff_ids = [sha256(layer) for layer in layers]
    config = config or config_for(diff_ids)
    cfg_name = sha256(config).split(":")[1] + ".json"
    files: dict[str, bytes | tuple[str, str]] = {cfg_name: config}
    paths = []
    for i, layer in enumerate(layers):
        d = hashlib.sha256(f"v1-{i}-{diff_ids[i]}".encode()).hexdigest()
        files[f"{d}/VERSION"] = b"1.0"
        files[f"{d}/json"] = json.dumps({"id": d}).encode()
        files[f"{d}/layer.tar"] = layer
        paths.append(f"{d}/layer.tar")
    files["manifest.json"] = json.dumps([{"Config": cfg_name, "RepoTags": tags, "Layers": paths}]).encode()
    repos: dict[str, dict[str, str]] = {}
    for t in tags:
        name, tag = t.rsplit(":", 1)
        repos.setdefault(name, {})[tag] = paths[-1].split("/")[0]
    files["repositories"] = json.dumps(repos).encode()
    return archive(files)


def legacy_save(chain: list[tuple[str, bytes, str]], repositories: dict[str, dict[str, str]]) -> bytes:
    """Docker <= 1.9: <id>/{VERSION,json,layer.tar} per layer (root first) and `repositories`."""
    files: dict[str, bytes | tuple[str, str]] = {}
    parent = None
    for layer_id, layer, cmd in chain:
        meta: dict[str, Any] = {
            "id": layer_id,
            "created": "2015-06-01T10:00:00.000000001Z",
            "os": "linux",
            "architecture": "amd64",
            "container_config": {"Cmd": ["/bin/sh", "-c", cmd]},
            "config": {"Cmd": ["/bin/sh"]},
            "Size": len(layer),
        }
        if parent:
            meta["parent"] = parent
        files[f"{layer_id}/VERSION"] = b"1.0"
        files[f"{layer_id}/json"] = json.dumps(meta).encode()
        files[f"{layer_id}/layer.tar"] = layer
        parent = layer_id
    files["repositories"] = json.dumps(repositories).encode()
    return archive(files)


def snapshot(root: str) -> dict[str, Any]:
    """Every path under ``root`` with its type, mode, size, content hash and link target."""
    out: dict[str, Any] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            entry: tuple[Any, ...] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size)
            if stat.S_ISREG(st.st_mode) and name != "lock":
                with open(path, "rb") as f:
                    entry += (hashlib.sha256(f.read()).hexdigest(),)
            elif stat.S_ISLNK(st.st_mode):
                entry += (os.readlink(path),)
            out[os.path.relpath(path, root)] = entry
    return out
