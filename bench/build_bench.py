"""``strata build`` side by side with ``buildah bud`` on one small multi-step Dockerfile: a busybox base,
3 COPY (a file, a 1 MB file, a directory of 50 small files) and 5 RUN, built fresh (every step runs:
``--no-cache``) and fully cached (nothing changed: every step comes from the cache), one run of each
side interleaved, the median of ``--runs``, and the ratios.

  strata build --no-cache -t T CTX      this tree's strata, through its zygote (``python -m runner``):
                                        a container per RUN, COPY written into an upper directly
  buildah bud --layers --no-cache ...   Debian's buildah, its own store (overlay driver where the host
                                        takes it, else vfs), ``--isolation chroot``: a layer per step
  buildah bud (no --layers)             for reference: buildah's default, one layer for the whole build,
                                        no cache

Usage: ``python bench/build_bench.py [--runs 3]`` as root. Everything it makes goes at the end.
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
STRATA = [sys.executable, "-m", "runner"]  # this tree, through the zygote, whatever the venv's script runs
ENV = {**os.environ, "PYTHONPATH": REPO}
DOCKERFILE = """FROM bb
COPY app.conf /etc/app.conf
COPY blob.bin /opt/blob.bin
COPY site/ /srv/site/
RUN mkdir -p /var/lib/app && echo ready > /var/lib/app/state
RUN cp /etc/app.conf /var/lib/app/app.conf && sed -i 's/debug=1/debug=0/' /var/lib/app/app.conf
RUN wc -c /opt/blob.bin > /var/lib/app/blob.size
RUN find /srv/site -type f | sort > /var/lib/app/index && rm /srv/site/page-0.html
RUN adduser -D -H app 2>/dev/null || echo 'app:x:1000:1000::/:/bin/sh' >> /etc/passwd
CMD ["cat", "/var/lib/app/index"]
"""


def run(cmd: list[str], cwd: str | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd or REPO, env=ENV, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"bench: {' '.join(cmd[:4])}... failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return elapsed


def rootfs(path: str) -> None:
    busybox = shutil.which("busybox") or sys.exit("bench: busybox-static is not installed")
    for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "root", "run"):
        os.makedirs(os.path.join(path, d))
    shutil.copy(busybox, os.path.join(path, "bin", "busybox"))
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", os.path.join(path, "bin", applet))
    with open(os.path.join(path, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
    with open(os.path.join(path, "etc", "group"), "w") as f:
        f.write("root:x:0:\nnogroup:x:65534:\n")
    for name in ("hostname", "hosts", "resolv.conf"):  # buildah's RUN mounts over them
        open(os.path.join(path, "etc", name), "w").close()
    os.chmod(os.path.join(path, "tmp"), 0o1777)


def context(path: str) -> None:
    os.makedirs(os.path.join(path, "site"))
    with open(os.path.join(path, "Dockerfile"), "w") as f:
        f.write(DOCKERFILE)
    with open(os.path.join(path, "app.conf"), "w") as f:
        f.write("debug=1\nname=bench\n")
    with open(os.path.join(path, "blob.bin"), "wb") as f:
        f.write(os.urandom(1 << 20))
    for i in range(50):
        with open(os.path.join(path, "site", f"page-{i}.html"), "w") as f:
            f.write(f"<p>page {i}</p>\n" * 20)


class Buildah:
    def __init__(self, base: str) -> None:
        self.base = base
        self.driver = "overlay"
        self.args = self._args()

    def _args(self) -> list[str]:
        return [
            "buildah",
            "--root",
            os.path.join(self.base, "root"),
            "--runroot",
            os.path.join(self.base, "run"),
            "--storage-driver",
            self.driver,
        ]

    def pull(self, archive: str) -> None:
        if subprocess.run([*self.args, "pull", f"docker-archive:{archive}"], capture_output=True).returncode:
            self.close()
            self.driver = "vfs"  # a host whose filesystem overlay cannot sit on
            self.args = self._args()
            run([*self.args, "pull", f"docker-archive:{archive}"])

    def bud(self, ctx: str, *flags: str) -> float:
        return run(
            [
                *self.args,
                "bud",
                "--pull-never",
                "--isolation",
                "chroot",
                "--format",
                "docker",
                *flags,
                "-t",
                "bench",
                ctx,
            ]
        )

    def close(self) -> None:
        subprocess.run([*self.args, "rm", "--all"], capture_output=True)
        subprocess.run([*self.args, "rmi", "--all", "--force"], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="builds of each kind (default 3)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root (containers and buildah's store)")
    if shutil.which("buildah") is None:
        sys.exit("bench: buildah is not installed (make bench installs it)")
    work = tempfile.mkdtemp(prefix="build-bench-")
    root = os.path.join(work, "store")
    buildah = Buildah(os.path.join(work, "buildah"))
    try:
        rootfs(os.path.join(work, "rootfs"))
        ctx = os.path.join(work, "ctx")
        context(ctx)
        run([*STRATA, "--root", root, "import", os.path.join(work, "rootfs"), "bb", "--change", 'CMD ["/bin/sh"]'])
        run([*STRATA, "--root", root, "save", "-o", os.path.join(work, "bb.tar"), "bb"])
        buildah.pull(os.path.join(work, "bb.tar"))
        strata = [*STRATA, "--root", root, "build", "-q", "-t", "bench"]
        run([*strata, ctx])  # the zygote warm, the page cache too, as for buildah's first build below
        buildah.bud(ctx, "--layers")
        times: dict[str, list[float]] = {k: [] for k in ("s-fresh", "b-fresh", "b-default", "s-cached", "b-cached")}
        for _ in range(args.runs):
            times["s-fresh"].append(run([*strata, "--no-cache", ctx]))
            times["b-fresh"].append(buildah.bud(ctx, "--layers", "--no-cache"))
            times["b-default"].append(buildah.bud(ctx))
            times["s-cached"].append(run([*strata, ctx]))
            times["b-cached"].append(buildah.bud(ctx, "--layers"))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"build bench: FROM busybox + 3 COPY + 5 RUN, median of {args.runs} (buildah {buildah.driver} driver)")
        print(f"  {'':28}{'strata':>10}{'buildah':>10}{'ratio':>8}")
        print(
            f"  {'fresh (--no-cache)':28}{med['s-fresh']:>9.2f}s{med['b-fresh']:>9.2f}s"
            f"{med['s-fresh'] / med['b-fresh']:>8.2f}"
        )
        print(
            f"  {'fully cached':28}{med['s-cached']:>9.2f}s{med['b-cached']:>9.2f}s"
            f"{med['s-cached'] / med['b-cached']:>8.2f}"
        )
        print(f"  {'buildah without --layers':28}{'':>10}{med['b-default']:>9.2f}s")
        print("  (ratio: strata's time / buildah's; below 1, strata is faster)")
    finally:
        buildah.close()
        subprocess.run([*STRATA, "--root", root, "rmi", "bench", "bb"], env=ENV, cwd=REPO, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
