"""Store speed, side by side with the anchors in one run, reported as ratios.

Workload: a Debian minbase rootfs (``debootstrap --variant=minbase``, ~200 MB, cached in bench/out/)
packed as a one-layer ``docker save`` archive.

  load : ``strata load -i archive.tar`` into a fresh root (copy, verify, extract)
         vs ``skopeo copy docker-archive:… oci:…`` + ``umoci unpack`` (copy, then extract)
  save : ``strata save -o out.tar``
         vs ``skopeo copy oci:… docker-archive:…``
  push : ``strata push`` to a registry on loopback (Debian's docker-registry), a new repository each
         run vs ``skopeo copy oci:… docker://…``
  pull : ``strata pull`` into a fresh root (fetch, verify, extract)
         vs ``skopeo copy docker://… oci:…`` + ``umoci unpack``

Runs alternate between the two sides, ``--runs`` times each; the median is reported. Caches are
warm for both (the archive was just written). Usage: ``python bench/store_bench.py [--runs 3]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OUT = os.path.join(HERE, "out")
ROOTFS = os.path.join(OUT, "debian-minbase")
STRATA = [sys.executable, "-m", "runner.cli"]
ENV = {**os.environ, "PYTHONPATH": REPO}


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, cwd=REPO)


def timed(*cmd: str) -> float:
    start = time.perf_counter()
    sh(*cmd)
    return time.perf_counter() - start


def ensure_rootfs() -> None:
    if os.path.exists(os.path.join(ROOTFS, "etc", "debian_version")):
        return
    os.makedirs(OUT, exist_ok=True)
    print("building the Debian minbase rootfs with debootstrap (once, cached in bench/out/)…", flush=True)
    sh("debootstrap", "--variant=minbase", "bookworm", ROOTFS, "http://deb.debian.org/debian")


@contextmanager
def registry(work: str) -> Iterator[str]:
    """A docker-registry on a free loopback port, storing under ``work``; stopped (by pid) after."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.makedirs(work, exist_ok=True)
    config = os.path.join(work, "registry.yml")
    with open(config, "w") as f:
        f.write(
            f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {os.path.join(work, 'registry')}\nhttp:\n  addr: 127.0.0.1:{port}\n"
        )
    proc = subprocess.Popen(["docker-registry", "serve", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit("bench: docker-registry did not start")
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for tool in ("skopeo", "umoci", "debootstrap", "docker-registry"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is not installed")
    ensure_rootfs()
    work = tempfile.mkdtemp(prefix="strata-bench-", dir=OUT)
    try:
        seed = os.path.join(work, "seed")
        archive = os.path.join(work, "debian.tar")
        sh(*STRATA, "--root", seed, "import", ROOTFS, "debian:minbase")
        sh(*STRATA, "--root", seed, "save", "-o", archive, "debian:minbase")
        size = os.path.getsize(archive)
        print(f"archive: {size / 1e6:.0f} MB, one layer, {sum(len(f) for _, _, f in os.walk(ROOTFS))} files")
        ours: dict[str, list[float]] = {"load": [], "save": [], "push": [], "pull": []}
        theirs: dict[str, list[float]] = {"load": [], "save": [], "push": [], "pull": []}
        for i in range(args.runs):
            # a registry per run: skopeo remembers where it pushed a blob, and would mount it from there
            with registry(os.path.join(work, f"reg{i}")) as host:
                layout = os.path.join(work, f"rlayout{i}")
                sh("skopeo", "copy", "-q", f"docker-archive:{archive}", f"oci:{layout}:minbase")
                ref = f"{host}/s/debian:minbase"
                sh(*STRATA, "--root", seed, "tag", "debian:minbase", ref)
                ours["push"].append(timed(*STRATA, "--root", seed, "push", "-q", ref))
                theirs["push"].append(
                    timed(
                        "skopeo",
                        "copy",
                        "-q",
                        "--dest-tls-verify=false",
                        f"oci:{layout}:minbase",
                        f"docker://{host}/k/debian:minbase",
                    )
                )
                root = os.path.join(work, f"proot{i}")
                ours["pull"].append(timed(*STRATA, "--root", root, "pull", "-q", ref))
                pulled, bundle = os.path.join(work, f"playout{i}"), os.path.join(work, f"pbundle{i}")
                t_copy = timed(
                    "skopeo",
                    "copy",
                    "-q",
                    "--src-tls-verify=false",
                    f"docker://{host}/k/debian:minbase",
                    f"oci:{pulled}:minbase",
                )
                theirs["pull"].append(t_copy + timed("umoci", "unpack", "--image", f"{pulled}:minbase", bundle))
                sh(*STRATA, "--root", seed, "rmi", ref)
            for path in (layout, root, pulled, bundle, os.path.join(work, f"reg{i}")):
                shutil.rmtree(path, ignore_errors=True)
        for i in range(args.runs):
            root = os.path.join(work, f"root{i}")
            ours["load"].append(timed(*STRATA, "--root", root, "load", "-i", archive))
            ours["save"].append(
                timed(*STRATA, "--root", root, "save", "-o", os.path.join(work, f"out{i}.tar"), "debian:minbase")
            )
            layout = os.path.join(work, f"layout{i}")
            bundle = os.path.join(work, f"bundle{i}")
            t_copy = timed("skopeo", "copy", "-q", f"docker-archive:{archive}", f"oci:{layout}:minbase")
            t_unpack = timed("umoci", "unpack", "--image", f"{layout}:minbase", bundle)
            theirs["load"].append(t_copy + t_unpack)
            theirs["save"].append(
                timed(
                    "skopeo",
                    "copy",
                    "-q",
                    f"oci:{layout}:minbase",
                    f"docker-archive:{os.path.join(work, f'sk{i}.tar')}:debian:minbase",
                )
            )
            for path in (root, layout, bundle, os.path.join(work, f"out{i}.tar"), os.path.join(work, f"sk{i}.tar")):
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.unlink(path)
        print(f"{'workload':<8} {'strata s':>9} {'anchor s':>9} {'ratio':>7}   anchor")
        for name, anchor in (
            ("load", "skopeo copy + umoci unpack"),
            ("save", "skopeo copy oci: -> docker-archive:"),
            ("push", "skopeo copy oci: -> docker://"),
            ("pull", "skopeo copy docker:// -> oci: + umoci unpack"),
        ):
            a, b = statistics.median(ours[name]), statistics.median(theirs[name])
            print(f"{name:<8} {a:9.2f} {b:9.2f} {a / b:7.2f}x   {anchor}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
