"""``podman run --rm IMAGE true`` with strata's runtime and mount program, side by side in one run
with podman + runc + fuse-overlayfs and podman + runc + kernel overlayfs (and the two mixed ones,
to tell the runtime's share from the mount program's), as multiples of the kernel overlayfs row.

Each setup is a podman of its own (storage.conf and containers.conf named by the environment, its
graph root and run root in a temp dir, cgroupfs, no network), with the same busybox image loaded
from ``strata save``. strata's commands run as pip installs them (``bin/``'s launchers pointed at
this checkout): ``strata-oci`` (a cold Python process per call; podman calls it three times per
container: create, start, delete) and ``strata-unionfs`` (a small client; its warm mount server
forks the daemon). The
setups are interleaved, run by run, after two warm-up runs each.

Usage: ``python bench/podman_bench.py [--runs 20]`` as root (podman 4.3, runc, fuse-overlayfs).
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from runner.oci.control import default_root  # noqa: E402

OUT = os.path.join(HERE, "out")
IMAGE = "docker.io/library/bb:latest"
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
RUN = ["run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096", IMAGE, "true"]
# (label, runtime, mount program): None is kernel overlayfs
SETUPS: list[tuple[str, str, str | None]] = [
    ("strata-oci + strata-unionfs", "strata-oci", "strata-unionfs"),
    ("runc + fuse-overlayfs", "runc", "fuse-overlayfs"),
    ("runc + kernel overlayfs", "runc", None),
    ("runc + strata-unionfs", "runc", "strata-unionfs"),
    ("strata-oci + kernel overlayfs", "strata-oci", None),
]


def launcher(name: str, directory: str) -> str:
    """The launcher NAME (``runner/bin/strata-oci``, ``unionfs/bin/strata-unionfs``) as pip installs
    it (``#!python`` made this interpreter), with this checkout first on its path; its path."""
    package = "unionfs" if name == "strata-unionfs" else "runner"
    with open(os.path.join(REPO, package, "bin", name)) as f:
        text = f.read().replace("#!python\n", f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {REPO!r})\n", 1)
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return path


class Podman:
    def __init__(self, base: str, runtime: str, mount_program: str | None) -> None:
        self.dir = tempfile.mkdtemp(prefix="pb-", dir="/tmp")  # podman wants a runroot of <= 50 bytes
        self.servers = os.path.join(self.dir, "unionfs")
        os.mkdir(self.servers, 0o700)
        program = f'[storage.options.overlay]\nmount_program = "{mount_program}"\n' if mount_program else ""
        with open(os.path.join(self.dir, "storage.conf"), "w") as f:
            f.write(
                f'[storage]\ndriver = "overlay"\ngraphroot = "{self.dir}/storage"\nrunroot = "{self.dir}/run"\n'
                + program
            )
        with open(os.path.join(self.dir, "containers.conf"), "w") as f:
            f.write(
                '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "none"\nruntime = "bench"\n'
                f'runtime_supports_json = ["crun", "runc", "bench"]\n[engine.runtimes]\nbench = ["{runtime}"]\n'
            )
        self.env = {
            **ENV,
            "CONTAINERS_STORAGE_CONF": os.path.join(self.dir, "storage.conf"),
            "CONTAINERS_CONF": os.path.join(self.dir, "containers.conf"),
            "STRATA_UNIONFS_DIR": self.servers,
        }

    def __call__(self, *args: str) -> float:
        start = time.perf_counter()
        subprocess.run(
            ["podman", "--tmpdir", os.path.join(self.dir, "tmp"), *args],
            env=self.env,
            check=True,
            stdout=subprocess.DEVNULL,
            cwd="/",
        )
        return time.perf_counter() - start

    def cleanup(self) -> None:
        try:
            subprocess.run(
                ["podman", "--tmpdir", os.path.join(self.dir, "tmp"), "rm", "-af"], env=self.env, capture_output=True
            )
            subprocess.run(
                ["podman", "--tmpdir", os.path.join(self.dir, "tmp"), "rmi", "-af"], env=self.env, capture_output=True
            )
            home = os.path.join(self.dir, "storage", "overlay")
            with open("/proc/self/mountinfo") as f:
                if any(line.split()[4] == home for line in f):
                    subprocess.run(["umount", home], check=True)
            for name in os.listdir(self.servers):
                if name.endswith(".pid"):
                    with open(os.path.join(self.servers, name)) as f:
                        pid = int(f.read())
                    with open(f"/proc/{pid}/task/{pid}/children") as f:
                        spares = [int(p) for p in f.read().split()]
                    for p in [pid, *spares]:
                        _stop(p)
        finally:
            shutil.rmtree(self.dir)


def _stop(pid: int) -> None:
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        os.kill(pid, 15)
        select.select([pidfd], [], [], 30)
    finally:
        os.close(pidfd)


def _image(work: str) -> str:
    """A busybox image (every applet) as ``strata save`` writes it."""
    rootfs = os.path.join(work, "rootfs")
    busybox = shutil.which("busybox")
    if busybox is None:
        sys.exit("bench: busybox-static is needed")
    for d in ("bin", "etc", "tmp", "root", "proc", "sys", "dev"):
        os.makedirs(os.path.join(rootfs, d))
    shutil.copy(busybox, os.path.join(rootfs, "bin", "busybox"))
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    with open(os.path.join(rootfs, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    strata = [sys.executable, "-m", "runner", "--root", os.path.join(work, "store")]
    env = {**ENV, "PYTHONPATH": REPO, "STRATA_NO_ZYGOTE": "1"}
    subprocess.run([*strata, "import", rootfs, "bb:latest"], check=True, env=env, stdout=subprocess.DEVNULL)
    archive = os.path.join(work, "bb.tar")
    subprocess.run([*strata, "save", "bb:latest", "-o", archive], check=True, env=env)
    return archive


@contextmanager
def engines(prefix: str, setups: list[tuple[str, str, str | None]]) -> Iterator[list[Podman]]:
    """A podman per setup (label, runtime, mount program or None for kernel overlayfs), each with
    the busybox image loaded, in a work dir made in OUT under ``prefix``; all of it gone afterwards,
    with strata-oci's default state root and podman's cgroups where they were made here."""
    if os.geteuid() != 0:
        sys.exit("bench: run as root")
    for tool in ("podman", "runc", "fuse-overlayfs"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is not installed (make bench installs it)")
    os.makedirs(OUT, exist_ok=True)
    work = tempfile.mkdtemp(prefix=prefix, dir=OUT)
    programs = {"runc": shutil.which("runc"), "fuse-overlayfs": shutil.which("fuse-overlayfs")}
    for name in ("strata-oci", "strata-unionfs"):
        programs[name] = launcher(name, work)
    made_groups = not os.path.isdir("/sys/fs/cgroup/memory/libpod_parent")
    # podman names no --root: strata-oci keeps its state and seccomp cache in its default root
    oci_state = default_root()
    made_state = not os.path.exists(oci_state)
    podmans: list[Podman] = []
    try:
        archive = _image(work)
        for _label, runtime, program in setups:
            podmans.append(Podman(work, str(programs[runtime]), programs[program] if program else None))
            podmans[-1]("load", "-q", "-i", archive)
        yield podmans
    finally:
        for podman in podmans:
            podman.cleanup()
        shutil.rmtree(work, ignore_errors=True)
        if made_state:
            shutil.rmtree(oci_state, ignore_errors=True)
        if made_groups:
            for group in ("libpod_parent/conmon", "libpod_parent"):
                for controller in os.listdir("/sys/fs/cgroup"):
                    path = os.path.join("/sys/fs/cgroup", controller, group)
                    if os.path.isdir(path):
                        try:
                            os.rmdir(path)
                        except OSError:  # in use by another podman meanwhile
                            pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    times: dict[str, list[float]] = {label: [] for label, _, _ in SETUPS}
    with engines("podman-bench-", SETUPS) as podmans:
        for run in range(args.runs + 2):
            for (label, _, _), podman in zip(SETUPS, podmans, strict=True):
                elapsed = podman(*RUN)
                if run >= 2:
                    times[label].append(elapsed)
    kernel = statistics.median(times["runc + kernel overlayfs"])
    fuse = times["runc + fuse-overlayfs"]
    print(f"podman run --rm IMAGE true, {args.runs} runs each, interleaved; medians")
    print(f"{'':<32}{'ms':>8}{'x kernel':>10}{'x fuse-ovl':>12}   range ms")
    for label, _, _ in SETUPS:
        t = times[label]
        m = statistics.median(t)
        print(
            f"{label:<32}{m * 1000:>8.0f}{m / kernel:>10.2f}{m / statistics.median(fuse):>12.2f}"
            f"   {min(t) * 1000:.0f}-{max(t) * 1000:.0f}"
        )
    # the setups of one round ran back to back: their ratio, round by round, shrugs off the host's load
    ratios = sorted(s / f for s, f in zip(times[SETUPS[0][0]], fuse, strict=True))
    print(
        f"{SETUPS[0][0]} / runc + fuse-overlayfs, round by round: {statistics.median(ratios):.2f} "
        f"({ratios[0]:.2f}-{ratios[-1]:.2f})"
    )


if __name__ == "__main__":
    main()
