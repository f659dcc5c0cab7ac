"""Registry transfers side by side with ``skopeo copy``, in one run, reported as ratios.

Workload: the Debian minbase rootfs (``debootstrap --variant=minbase``, ~200 MB, cached in bench/out/)
as one gzip layer (as skopeo compresses it for a registry), in an OCI layout that skopeo reads and
that ``strata load`` takes as it is: both sides hold the same compressed blob.

  push cold : ``strata push`` to an empty registry   vs ``skopeo copy oci:… docker://…``
  push warm : the same push again (every blob there) vs the same copy again
  pull cold : ``strata pull`` into a fresh root (fetch, verify, extract, syncfs: nothing is
              published before it is on the disk)
              vs ``skopeo copy docker://… oci:…`` (fetch, verify) and, like for like, + ``umoci unpack``
              (neither syncs: what they wrote may still be in the page cache when they end)

Each cold row starts with the page cache's pending writes on the disk (``os.sync()``): a syncfs
would otherwise write out what the other side and the registries wrote just before, too. And the
two sides take turns going first, run by run: this VM's disk is rate-limited (a burst, then slower),
and a fixed order would hand the slow part to one side.
  pull warm : the same pull again (every layer here) vs the same copy again into the same layout

Then a 3-layer image (the rootfs split in three gzip layers): ``Store.pull`` with 3 layers fetched
ahead at a time against ``parallel=0`` (one layer at a time, each streamed as it is staged), on
loopback (where fetching is nearly free and extraction is all) and through the tests' proxy paced
to 25 MB/s per connection (a 200 Mbit/s link: what a registry on a network is like).

strata runs as installed (the venv's ``strata`` script): through its zygote (a warm process each
command is forked from).
Each figure is the median of ``--runs`` runs (a fresh registry and fresh destinations per run); a
warm row's, of ``--warm`` calls per run, strata's and skopeo's taking turns.
Usage: ``python bench/registry_bench.py [--runs 3] [--warm 10]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import store_bench  # noqa: E402
from runner_bench import stop_zygote  # noqa: E402
from store_bench import ENV, OUT, REPO, ROOTFS, ensure_rootfs, registry, sh, timed  # noqa: E402

from store import Store  # noqa: E402
from store.registry import RemoteOptions  # noqa: E402

_SCRIPT = os.path.join(os.path.dirname(sys.executable), "strata")  # what users run, in the venv
STRATA = [_SCRIPT] if os.path.exists(_SCRIPT) else [sys.executable, "-m", "runner"]
assert store_bench.ENV is ENV
ENV.pop("PYTHONDONTWRITEBYTECODE", None)  # users' runs have their bytecode cached (as runner_bench.py)


RATE = 25e6  # bytes a second per connection: a 200 Mbit/s link


def cold(*cmd: str) -> float:
    """``timed``, after the writes still pending in the page cache are on the disk: a strata pull
    ends with a syncfs (nothing it staged is published before it is on the disk), which would
    otherwise also write out what the other side and the registries wrote just before it."""
    os.sync()
    return timed(*cmd)


@contextlib.contextmanager
def fake_proxy(work: str, upstream: str, rate: float) -> Iterator[str]:
    """The tests' proxy (``tests/registry_fakes.py proxy --rate``) in front of ``upstream``; its host:port."""
    proc = subprocess.Popen(
        [
            sys.executable,
            os.path.join(REPO, "tests", "registry_fakes.py"),
            "proxy",
            "--log",
            os.path.join(work, "proxy.log"),
            "--upstream",
            f"http://{upstream}",
            "--rate",
            str(rate),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        port = proc.stdout.readline().decode().strip()
        if not port.isdigit():
            sys.exit("bench: the proxy did not start")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


def three_layer_layout(path: str) -> None:
    """An OCI layout of the rootfs in three gzip layers: usr/share, the rest of usr, everything else."""
    parts: list[list[str]] = [[], [], []]
    for d, dirs, files in os.walk(ROOTFS):
        for name in sorted(dirs + files):
            rel = os.path.relpath(os.path.join(d, name), ROOTFS)
            parts[0 if rel.startswith("usr/share") else 1 if rel.startswith("usr") else 2].append(rel)
    blobs = os.path.join(path, "blobs", "sha256")
    os.makedirs(blobs)

    def put(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as f:
            f.write(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layers, diff_ids = [], []
    for names in parts:
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for rel in names:
                tar.add(os.path.join(ROOTFS, rel), rel, recursive=False)
        diff_ids.append("sha256:" + hashlib.sha256(raw.getvalue()).hexdigest())
        layers.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                **put(gzip.compress(raw.getvalue(), compresslevel=6)),
            }
        )
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **put(config)},
            "layers": layers,
        }
    ).encode()
    with open(os.path.join(path, "index.json"), "w") as f:
        json.dump(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        **put(manifest),
                        "annotations": {"org.opencontainers.image.ref.name": "three:1"},
                    }
                ],
            },
            f,
        )
    with open(os.path.join(path, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion": "1.0.0"}')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warm", type=int, default=10, help="warm calls per run, strata's and skopeo's taking turns")
    parser.add_argument("--layers-only", action="store_true", help="only the 3-layer pulls")
    args = parser.parse_args()
    for tool in ("skopeo", "umoci", "debootstrap", "docker-registry"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is not installed")
    ensure_rootfs()
    work = tempfile.mkdtemp(prefix="strata-regbench-", dir=OUT)
    zygote = os.path.join(work, "zygote")  # strata as installed: each command a fork of a warm zygote
    os.mkdir(zygote, 0o700)
    ENV["STRATA_ZYGOTE_DIR"] = zygote
    try:
        sh(*STRATA, "--root", os.path.join(work, "warm-up"), "images")  # the zygote starts
        seed, layout = os.path.join(work, "seed"), os.path.join(work, "layout")
        archive = os.path.join(work, "debian.tar")
        sh(*STRATA, "--root", seed, "import", ROOTFS, "debian:minbase")
        sh(*STRATA, "--root", seed, "save", "-o", archive, "debian:minbase")
        sh("skopeo", "copy", "-q", f"docker-archive:{archive}", f"oci:{layout}:minbase")  # gzip, as pushed
        gz = os.path.join(work, "gz")
        sh(*STRATA, "--root", gz, "load", "-i", layout)
        image = subprocess.run(
            [*STRATA, "--root", gz, "images", "-a", "-q", "--no-trunc"],
            check=True,
            capture_output=True,
            text=True,
            env=ENV,
        ).stdout.split()[0]  # skopeo's name has no tag
        sh(*STRATA, "--root", gz, "tag", image, "debian:gz")  # stays while each run's tag comes and goes
        blob = max(os.scandir(os.path.join(layout, "blobs", "sha256")), key=lambda e: e.stat().st_size)
        print(
            f"image: one gzip layer of {blob.stat().st_size / 1e6:.0f} MB "
            f"({os.path.getsize(archive) / 1e6:.0f} MB uncompressed)"
        )
        names = ("push cold", "push warm", "pull cold", "pull warm")
        ours: dict[str, list[float]] = {n: [] for n in names}
        theirs: dict[str, list[float]] = {n: [] for n in names + ("pull cold+unpack",)}
        for i in range(0 if args.layers_only else args.runs):
            first = 1 if i % 2 else 0  # who goes first in a cold row: turn about (this VM's disk is rate-limited)
            with registry(os.path.join(work, f"sreg{i}")) as mine, registry(os.path.join(work, f"kreg{i}")) as other:
                ref = f"{mine}/s/debian:minbase"
                sh(*STRATA, "--root", gz, "tag", image, ref)
                push = (*STRATA, "--root", gz, "push", "-q", ref)
                dest = f"docker://{other}/k/debian:minbase"
                copy = ("skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:minbase", dest)
                for side in (0, 1)[first:] + (0, 1)[:first]:
                    (ours if side == 0 else theirs)["push cold"].append(cold(*(push, copy)[side]))
                for _ in range(args.warm):  # ~30 ms each: one call is mostly the machine's noise
                    ours["push warm"].append(timed(*push))
                    theirs["push warm"].append(timed(*copy))
                root = os.path.join(work, f"proot{i}")
                pull = (*STRATA, "--root", root, "pull", "-q", ref)
                pulled, bundle = os.path.join(work, f"playout{i}"), os.path.join(work, f"pbundle{i}")
                fetch = ("skopeo", "copy", "-q", "--src-tls-verify=false", dest, f"oci:{pulled}:minbase")
                for side in (0, 1)[first:] + (0, 1)[:first]:
                    if side == 0:
                        ours["pull cold"].append(cold(*pull))
                    else:
                        theirs["pull cold"].append(cold(*fetch))
                        unpack = timed("umoci", "unpack", "--image", f"{pulled}:minbase", bundle)  # right after
                        theirs["pull cold+unpack"].append(theirs["pull cold"][-1] + unpack)
                for _ in range(args.warm):
                    ours["pull warm"].append(timed(*pull))
                    theirs["pull warm"].append(timed(*fetch))
                sh(*STRATA, "--root", gz, "rmi", ref)
            for path in (root, pulled, bundle, os.path.join(work, f"sreg{i}"), os.path.join(work, f"kreg{i}")):
                shutil.rmtree(path, ignore_errors=True)
        if not args.layers_only:
            print(f"{'workload':<10} {'strata s':>9} {'skopeo s':>9} {'ratio':>7}   skopeo side")
            for name in names:
                a, b = statistics.median(ours[name]), statistics.median(theirs[name])
                print(f"{name:<10} {a:9.3f} {b:9.3f} {a / b:7.2f}x   skopeo copy")
            a, b = statistics.median(ours["pull cold"]), statistics.median(theirs["pull cold+unpack"])
            print(f"{'pull cold':<10} {a:9.2f} {b:9.2f} {a / b:7.2f}x   skopeo copy + umoci unpack (like for like)")

        three = os.path.join(work, "three")
        three_layer_layout(three)
        sizes = [e.stat().st_size for e in os.scandir(os.path.join(three, "blobs", "sha256"))]
        print(f"3-layer image: {sum(sorted(sizes)[-3:]) / 1e6:.0f} MB of gzip layers")
        times: dict[int, list[float]] = {3: [], 0: []}
        with registry(os.path.join(work, "treg")) as host:
            ref = f"{host}/three:1"
            sh(*STRATA, "--root", gz, "load", "-i", three)
            sh(*STRATA, "--root", gz, "tag", "three:1", ref)
            sh(*STRATA, "--root", gz, "push", "-q", ref)
            for i in range(args.runs):
                for parallel in (3, 0):
                    root = os.path.join(work, f"t{parallel}-{i}")
                    os.sync()  # (as ``cold``)
                    start = time.perf_counter()
                    Store(root).pull(ref, options=RemoteOptions(), parallel=parallel)
                    times[parallel].append(time.perf_counter() - start)
                    shutil.rmtree(root)
            a, b = statistics.median(times[3]), statistics.median(times[0])
            print(
                f"{'pull 3 layers, loopback':<32} parallel {a:6.2f} s   one at a time {b:6.2f} s   ratio {a / b:5.2f}x"
            )
            # the same through a proxy as fast as a 200 Mbit/s link per connection (tests/registry_fakes.py)
            slow: dict[int, list[float]] = {3: [], 0: []}
            with fake_proxy(work, host, RATE) as proxy:
                for i in range(args.runs):
                    for parallel in (3, 0):
                        root = os.path.join(work, f"s{parallel}-{i}")
                        os.sync()
                        start = time.perf_counter()
                        Store(root).pull(f"{proxy}/three:1", options=RemoteOptions(), parallel=parallel)
                        slow[parallel].append(time.perf_counter() - start)
                        shutil.rmtree(root)
            a, b = statistics.median(slow[3]), statistics.median(slow[0])
            print(
                f"{'pull 3 layers, 25 MB/s a link':<32} parallel {a:6.2f} s   one at a time {b:6.2f} s   "
                f"ratio {a / b:5.2f}x"
            )
    finally:
        stop_zygote(zygote)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
