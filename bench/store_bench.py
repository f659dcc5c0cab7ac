"""Store speed, side by side with the anchors in one run, reported as ratios.

Workload: a Debian minbase rootfs (``debootstrap --variant=minbase``, ~200 MB, cached in bench/out/)
packed as a one-layer ``docker save`` archive.

  load : ``strata load -i archive.tar`` into a fresh root (copy, verify, extract)
         vs ``skopeo copy docker-archive:… oci:…`` + ``umoci unpack`` (copy, then extract)
  save : ``strata save -o out.tar``
         vs ``skopeo copy oci:… docker-archive:…``

Runs alternate between the two sides, ``--runs`` times each; the median is reported. Caches are
warm for both (the archive was just written). Usage: ``python bench/store_bench.py [--runs 3]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for tool in ("skopeo", "umoci", "debootstrap"):
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
        ours: dict[str, list[float]] = {"load": [], "save": []}
        theirs: dict[str, list[float]] = {"load": [], "save": []}
        for i in range(args.runs):
            root = os.path.join(work, f"root{i}")
            ours["load"].append(timed(*STRATA, "--root", root, "load", "-i", archive))
            ours["save"].append(timed(*STRATA, "--root", root, "save", "-o", os.path.join(work, f"out{i}.tar"),
                                      "debian:minbase"))
            layout = os.path.join(work, f"layout{i}")
            bundle = os.path.join(work, f"bundle{i}")
            t_copy = timed("skopeo", "copy", "-q", f"docker-archive:{archive}", f"oci:{layout}:minbase")
            t_unpack = timed("umoci", "unpack", "--image", f"{layout}:minbase", bundle)
            theirs["load"].append(t_copy + t_unpack)
            theirs["save"].append(timed("skopeo", "copy", "-q", f"oci:{layout}:minbase",
                                        f"docker-archive:{os.path.join(work, f'sk{i}.tar')}:debian:minbase"))
            for path in (root, layout, bundle, os.path.join(work, f"out{i}.tar"), os.path.join(work, f"sk{i}.tar")):
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.unlink(path)
        print(f"{'workload':<8} {'strata s':>9} {'anchor s':>9} {'ratio':>7}   anchor")
        for name, anchor in (("load", "skopeo copy + umoci unpack"), ("save", "skopeo copy oci: -> docker-archive:")):
            a, b = statistics.median(ours[name]), statistics.median(theirs[name])
            print(f"{name:<8} {a:9.2f} {b:9.2f} {a / b:7.2f}x   {anchor}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
