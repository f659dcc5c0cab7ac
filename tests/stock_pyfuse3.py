"""pyfuse3 as released, without ``unionfs/patches``: an interpreter of its own for the union daemons
that the mounted tests start on it (issue 22: "unionfs also runs on a stock pyfuse3" is proved, not
claimed).

``build/stock-pyfuse3/venv-<key>``: a venv made by the interpreter this suite's venv was made from
(no system site-packages), holding pyfuse3 built from its unpatched source release (the Makefile's
download when there is one, else PyPI's) and the trio this suite runs with, so that pyfuse3 is all
that differs. Built once per checkout, under a lock, bounded in time (a cold build takes about a
minute, most of it compiling pyfuse3). ``<key>`` hashes the interpreter and pyfuse3's and trio's
versions: another of them gets a venv of its own, and a run never has its venv rebuilt under it.
``make clean`` removes them with the rest of build/.

``features(python)`` says what the pyfuse3 of an interpreter offers unionfs, as ``unionfs.fs`` finds
it there: the tests expect of a daemon what its pyfuse3 gives, not what the test process's has.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

from helpers import BuildSteps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOME = os.path.join(REPO, "build", "stock-pyfuse3")
BUILD_TIMEOUT = 600.0  # seconds for the whole build


class StockBuildError(RuntimeError):
    pass


def pyfuse3_version() -> str:
    """The pyfuse3 release the Makefile patches (``PYFUSE3 := 3.5.0``): the stock one is the same."""
    with open(os.path.join(REPO, "Makefile")) as f:
        found = re.search(r"^PYFUSE3\s*:=\s*(\S+)", f.read(), re.M)
    if found is None:
        raise StockBuildError("Makefile: no PYFUSE3 := VERSION line")
    return found.group(1)


def _key() -> str:
    return json.dumps(
        {
            "python": sys.version,
            "base": sys._base_executable,  # type: ignore[attr-defined]
            "pyfuse3": pyfuse3_version(),
            "trio": importlib.metadata.version("trio"),
        },
        sort_keys=True,
    )


@functools.cache
def python() -> str:
    """The stock venv's interpreter, built first if there is none."""
    key = _key()
    venv = os.path.join(HOME, "venv-" + hashlib.sha256(key.encode()).hexdigest()[:12])
    marker = os.path.join(venv, ".strata-complete")
    os.makedirs(HOME, exist_ok=True)
    lock = os.open(venv + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run in this checkout may be building it
        with contextlib.suppress(FileNotFoundError), open(marker) as f:
            if f.read() == key:
                return os.path.join(venv, "bin", "python")
        if os.path.lexists(venv):
            shutil.rmtree(venv)  # a build that did not finish
        _build(venv)
        with open(marker + ".new", "w") as f:
            f.write(key)
        os.replace(marker + ".new", marker)
        return os.path.join(venv, "bin", "python")
    finally:
        os.close(lock)


def _build(venv: str) -> None:
    steps = BuildSteps("stock pyfuse3", BUILD_TIMEOUT, StockBuildError)

    version = pyfuse3_version()
    # the interpreter .venv was made from: `python -m venv` from within a venv would do the same
    steps.run([sys._base_executable, "-m", "venv", venv])  # type: ignore[attr-defined]
    py = os.path.join(venv, "bin", "python")
    sdist = os.path.join(REPO, "build", "pyfuse3", f"pyfuse3-{version}.tar.gz")  # the Makefile's, unpatched
    source = sdist if os.path.isfile(sdist) else f"pyfuse3=={version}"
    steps.run(
        [
            py,
            "-m",
            "pip",
            "-q",
            "--disable-pip-version-check",
            "--no-input",
            "install",
            "--no-binary",
            "pyfuse3",
            source,
            f"trio=={importlib.metadata.version('trio')}",
        ]
    )
    found = features(py)
    if found.version != version or found.patched:
        raise StockBuildError(
            f"stock pyfuse3: {venv} holds pyfuse3 {found.version} "
            f"({'patched' if found.patched else 'stock'}), not a stock {version}"
        )


@dataclass(frozen=True)
class Features:
    """What an interpreter's pyfuse3 offers unionfs (each is one of unionfs/patches)."""

    version: str
    dir_cache: bool  # 0001: listings and symlink targets kept by the kernel (unionfs.fs.DIR_CACHE)
    poll_loop: bool  # 0002: the main loop without a hand-off, waiting in poll(2)
    no_open: bool  # 0003: no OPEN and no RELEASE for files (unionfs.fs.NO_OPEN)
    killpriv_v2: bool  # 0004: FUSE_HANDLE_KILLPRIV_V2 can be asked for
    fallocate: bool  # 0005: FALLOCATE reaches the filesystem
    passthrough: bool  # 0006: FUSE_PASSTHROUGH can be asked for (unionfs.fs.PASSTHROUGH)

    @property
    def opens(self) -> bool:
        """Does the kernel send OPEN to a daemon run as root on it: on a stock pyfuse3, and where
        unionfs asks for passthrough, which needs it (else no_open spares it)."""
        return not self.no_open or self.passthrough

    @property
    def patched(self) -> bool:
        return any((self.dir_cache, self.poll_loop, self.no_open, self.killpriv_v2, self.fallocate, self.passthrough))


_REPORT = """\
import importlib.metadata, json, pyfuse3
from unionfs import fs
print(json.dumps({"version": importlib.metadata.version("pyfuse3"), "dir_cache": fs.DIR_CACHE,
                  "poll_loop": hasattr(pyfuse3, "_poll_loop_usable"), "no_open": fs.NO_OPEN,
                  "killpriv_v2": hasattr(pyfuse3, "handles_killpriv_v2"),
                  "fallocate": hasattr(pyfuse3.Operations, "fallocate"), "passthrough": fs.PASSTHROUGH}))
"""


@functools.cache
def features(python: str) -> Features:
    done = subprocess.run(
        [python, "-c", _REPORT],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    if done.returncode != 0:
        raise StockBuildError(f"{python} cannot import pyfuse3 and unionfs:\n{done.stderr[-3000:]}")
    return Features(**json.loads(done.stdout))
