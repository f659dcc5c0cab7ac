"""The union filesystem's speed, side by side in one run with kernel overlayfs and fuse-overlayfs,
reported as multiples of kernel overlayfs (this machine is shared and noisy: ratios, not seconds).

Lower: a Debian minbase rootfs (debootstrap, cached in bench/out/) plus a layer of big files.
Every workload gets a fresh mount with an empty upper, on an ext4 made for the run (``scratch_fs``). "cold" is the first pass on a fresh mount
(the backing files are in the page cache for all three); "warm" is the pass after it.

Mount latency is given twice: until the mount command returns, and until a first stat inside the mount
has come back (a daemon that has mounted may still be starting up: fuse-overlayfs answers its first
request after its command has returned). The last two rows are the floor of any Python command, in the
same units: the interpreter starting, then also importing trio and pyfuse3, which the daemon needs.

The last column is the goal's own measure: strata's time over fuse-overlayfs's, run by run, as the median
and the range over ``--repeat`` runs.

Usage: ``python bench/unionfs_bench.py [--only NAME,NAME] [--repeat N]`` (as root: kernel overlayfs).
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import select
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OUT = os.path.join(HERE, "out")
ROOTFS = os.path.join(OUT, "debian-minbase")
EXTRA = os.path.join(OUT, "lower-extra")
SMALL_TAR = os.path.join(OUT, "small-files.tar")
# The unions' upper, work and merged dirs go on a fresh ext4 made for each bench run. On the host's
# years-old root filesystem, creating a file costs 25 µs in one new directory and 1 ms in the next
# (it depends on the block group ext4 picks), which decided the writing rows more than the daemons did.
SCRATCH = os.path.join(OUT, "scratch")
SCRATCH_IMAGE = os.path.join(OUT, "scratch.img")
# The metadata rows put the upper on a tmpfs (where a copy-up costs no disk at all, so the
# daemons' own costs show): mounted for the run at ``SCRATCH_TMPFS``, inside the scratch ext4.
SCRATCH_TMPFS = os.path.join(SCRATCH, "tmpfs")
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)

from unionfs import mountinfo  # noqa: E402


def ensure_inputs() -> None:
    if not os.path.exists(os.path.join(ROOTFS, "etc", "debian_version")):
        from store_bench import ensure_rootfs

        ensure_rootfs()
    if not os.path.exists(os.path.join(EXTRA, "done")):
        os.makedirs(os.path.join(EXTRA, "many"), exist_ok=True)
        with open(os.path.join(EXTRA, "seq512"), "wb") as f:
            for _ in range(512):
                f.write(os.urandom(1 << 20))
        with open(os.path.join(EXTRA, "append64"), "wb") as f:
            f.write(os.urandom(64 << 20))
        for i in range(1000):
            with open(os.path.join(EXTRA, "many", f"f{i:04}"), "wb") as f:
                f.write(b"x" * 100)
        open(os.path.join(EXTRA, "done"), "w").close()
    if not os.path.exists(SMALL_TAR):
        with tarfile.open(SMALL_TAR + ".tmp", "w") as tar:
            for i in range(10_000):
                info = tarfile.TarInfo(f"small/d{i // 500:02}/f{i:05}")
                info.size = 64
                tar.addfile(info, fileobj=__import__("io").BytesIO(b"s" * 64))
        os.rename(SMALL_TAR + ".tmp", SMALL_TAR)


def is_mounted(path: str) -> bool:
    return bool(mountinfo.mounts_at(path))


@contextmanager
def scratch_fs() -> Iterator[str]:
    """A new 4 GiB ext4 on a loop device, mounted at ``SCRATCH`` for one run (inode tables and
    journal written up front, so no kernel thread initialises them during the run); gone after."""
    if is_mounted(SCRATCH):  # left by a run that was killed
        subprocess.run(["umount", SCRATCH], check=True)
    os.makedirs(SCRATCH, exist_ok=True)
    with open(SCRATCH_IMAGE, "wb") as f:
        f.truncate(4 << 30)
    try:
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", SCRATCH_IMAGE], check=True
        )
        subprocess.run(["mount", "-o", "loop", SCRATCH_IMAGE, SCRATCH], check=True)
        try:
            os.makedirs(SCRATCH_TMPFS)
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g", "bench-tmpfs", SCRATCH_TMPFS], check=True)
            try:
                yield SCRATCH
            finally:
                subprocess.run(["umount", SCRATCH_TMPFS], check=True)
        finally:
            subprocess.run(["umount", SCRATCH], check=True)
    finally:
        os.unlink(SCRATCH_IMAGE)


class Union:
    """One mounted union of one kind, with its own upper and work dirs. The strata kinds run
    ``python -m unionfs`` from the package under ``root`` (this checkout by default; another revision's
    worktree for ``unionfs_ab``)."""

    def __init__(self, kind: str, base: str, root: str = REPO) -> None:
        self.kind = kind
        self.base = base
        self.root = root
        self.upper, self.work, self.merged = (os.path.join(base, n) for n in ("upper", "work", "merged"))
        for d in (self.upper, self.work, self.merged):
            os.makedirs(d)
        self.mount_time: float | None = None  # seconds the mount command took
        self.answer_time: float | None = None  # and until a stat inside the mount came back
        self.unmount_time: float | None = None
        opts = f"lowerdir={EXTRA}:{ROOTFS},upperdir={self.upper},workdir={self.work}"
        if kind == "kernel":
            self.cmd = ["mount", "-t", "overlay", "overlay", "-o", opts, self.merged]
        elif kind == "fuse-overlayfs":
            self.cmd = ["fuse-overlayfs", "-o", opts, self.merged]
        else:
            # as the runner mounts a container's union: metacopy=on (the kernel's and fuse-overlayfs's
            # are off: fuse-overlayfs has none, and containers-storage's mount program needs none)
            # (a revision from before metacopy, for ``unionfs_ab``, would refuse the option)
            with open(os.path.join(root, "unionfs", "options.py")) as f:
                extra = ",metacopy=on" if '"metacopy"' in f.read() else ""
            extra += {"strata volatile": ",volatile", "strata no-passthrough": ",passthrough=0"}.get(kind, "")
            self.cmd = [sys.executable, "-m", "unionfs", "-o", opts + extra, self.merged]

    def mount(self) -> None:
        start = time.perf_counter()
        subprocess.run(self.cmd, check=True, cwd=self.root, env={**os.environ, "PYTHONPATH": self.root})
        self.mount_time = time.perf_counter() - start
        os.stat(os.path.join(self.merged, "etc"))  # the first request: a daemon answers it once it runs
        self.answer_time = time.perf_counter() - start
        assert is_mounted(self.merged)

    def unmount(self) -> None:
        sources = mountinfo.sources_at(self.merged)
        start = time.perf_counter()
        subprocess.run(
            ["umount", self.merged] if self.kind == "kernel" else ["fusermount3", "-u", self.merged], check=True
        )
        self.unmount_time = time.perf_counter() - start
        # A strata daemon syncs and closes the upper after the unmount returns: wait for its exit
        # (its pid is in the mount's source), or the scratch filesystem may still be busy.
        for source in sources:
            if source.startswith("strata-unionfs:"):
                wait_exit(int(source.split(":")[1]))


def wait_exit(pid: int, timeout: float = 60) -> None:
    """Wait until process ``pid`` has exited (at most ``timeout`` seconds)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if not select.select([fd], [], [], timeout)[0]:
            raise RuntimeError(f"the daemon {pid} did not exit within {timeout} s of its unmount")
    finally:
        os.close(fd)


def forked_mount_latency(base: str) -> tuple[float, float]:
    """The runner's way to mount: ``fork_serve`` from a process that has strata imported already.
    Seconds until the daemon reports the mount ready, and until a stat inside it came back."""
    from unionfs.mount import fork_serve

    upper, work, merged = (os.path.join(base, n) for n in ("upper", "work", "merged"))
    for d in (upper, work, merged):
        os.makedirs(d)
    start = time.perf_counter()
    pid, ready = fork_serve(merged, [EXTRA, ROOTFS], upper, work)
    with os.fdopen(ready, "rb") as pipe:
        message = pipe.read()
    elapsed = time.perf_counter() - start
    try:
        assert message == b"ok" and is_mounted(merged), message
        os.stat(os.path.join(merged, "etc"))
        answered = time.perf_counter() - start
    finally:
        subprocess.run(["fusermount3", "-u", merged], check=False)
        os.waitpid(pid, 0)
    return elapsed, answered


def interpreter_floor() -> tuple[float, float]:
    """What any ``python -m unionfs`` pays before it can mount: seconds for this interpreter to
    start and exit, and to do so having imported trio and pyfuse3 (which the daemon needs)."""
    env = {**os.environ, "PYTHONPATH": REPO}
    found = []
    for code in ("pass", "import trio, pyfuse3"):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env)
        found.append(time.perf_counter() - start)
    return found[0], found[1]


def walk_stat(root: str) -> None:
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            os.lstat(os.path.join(dirpath, name))


def read_all(root: str) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    while f.read(1 << 20):
                        pass


def read_all_like_cat(root: str) -> None:
    """``read all of /usr`` as cat, tar or cp read: the listing's file types (no stat per name),
    then open, fstat, read, close. Python's ``open()`` also asks each file ``isatty()``: an ioctl,
    which FUSE sends to the daemon (kernel overlayfs answers it at once), so the row above costs a
    FUSE union one round trip per file more than these readers do."""
    dirs = [root]
    while dirs:
        with os.scandir(dirs.pop()) as entries:
            listed = list(entries)
        dirs += [e.path for e in listed if e.is_dir(follow_symlinks=False)]
        for path in [e.path for e in listed if e.is_file(follow_symlinks=False)]:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fstat(fd)
                while os.read(fd, 1 << 17):
                    pass
            finally:
                os.close(fd)


def seq_read(path: str) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass


def random_reads(path: str) -> None:
    """50000 preads of 4 KiB at random offsets (~0.15 s on the kernel's union here: 5000 took 15 ms,
    which the machine's noise decided more than the union did)."""
    rng = random.Random(7)
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(50000):
            os.pread(fd, 4096, rng.randrange(0, size - 4096))
    finally:
        os.close(fd)


def append_copyup(path: str) -> None:
    with open(path, "ab") as f:
        f.write(b"appended")


def touch_each(root: str) -> None:
    """touch(1) of 1000 lower files, one op per file on a fresh mount: each copies its file up."""
    for i in range(1000):
        os.utime(os.path.join(root, f"f{i:04}"))


def chmod_each(root: str) -> None:
    for i in range(1000):
        os.chmod(os.path.join(root, f"f{i:04}"), 0o600)


def chmod_touch(root: str) -> None:
    for i in range(1000):
        p = os.path.join(root, f"f{i:04}")
        os.chmod(p, 0o600)
        os.utime(p)


def untar(root: str) -> None:
    subprocess.run(["tar", "-xf", SMALL_TAR, "-C", root], check=True)


def create_delete(root: str) -> None:
    d = os.path.join(root, "cd")
    os.mkdir(d)
    for i in range(5000):
        with open(os.path.join(d, f"f{i}"), "wb") as f:
            f.write(b"x")
    for i in range(5000):
        os.unlink(os.path.join(d, f"f{i}"))


def rm_rf(root: str) -> None:
    subprocess.run(["rm", "-rf", root], check=True)


# name -> (function, path inside the merged dir, passes: 1 = cold only, 2 = cold and warm)
WORKLOADS: dict[str, tuple[Callable[[str], None], str, int]] = {
    "walk (stat all)": (walk_stat, "", 2),
    "read all of /usr": (read_all, "usr", 2),
    "read all of /usr, as cat reads": (read_all_like_cat, "usr", 2),
    "512 MiB seq read": (seq_read, "seq512", 2),
    "random 4k reads": (random_reads, "seq512", 2),
    "append 64 MiB lower (copy-up)": (append_copyup, "append64", 1),
    "chmod+touch 1000 lower": (chmod_touch, "many", 1),
    "touch 1000 lower (tmpfs upper)": (touch_each, "many", 1),
    "chmod 1000 lower (tmpfs upper)": (chmod_each, "many", 1),
    "touch 1000 lower (ext4 upper)": (touch_each, "many", 1),
    "untar 10k small files": (untar, "", 1),
    "create+delete 5000": (create_delete, "", 1),
    "rm -rf lower /usr/share": (rm_rf, "usr/share", 1),
}
KINDS = ["kernel", "fuse-overlayfs", "strata", "strata no-passthrough", "strata volatile"]
# Kernel overlayfs fsyncs a copy-up before renaming it into place; strata notes it in its journal
# (a power cut cannot lose it) and syncs the upper later; fuse-overlayfs (1.10, as packaged) does
# neither. ``-o volatile`` is strata with neither: the writing workloads run once more that way, to
# compare like with like.
# As root strata reads and writes open files through FUSE passthrough, which needs the kernel's OPEN;
# ``-o passthrough=0`` is the path it takes otherwise (rootless): no OPEN at all, the daemon reads and
# writes. Both run, to weigh one against the other.
WRITING = {
    "append 64 MiB lower (copy-up)",
    "chmod+touch 1000 lower",
    "untar 10k small files",
    "create+delete 5000",
    "rm -rf lower /usr/share",
    "touch 1000 lower (tmpfs upper)",
    "chmod 1000 lower (tmpfs upper)",
    "touch 1000 lower (ext4 upper)",
}
# (chmod+touch runs both ops on the same files: the second copies nothing up. The three rows after it
# are the issue's: one op per file, each on a fresh mount, so each op is a copy-up.)
ON_TMPFS = {"touch 1000 lower (tmpfs upper)", "chmod 1000 lower (tmpfs upper)"}


def scratch_for(name: str) -> str:
    """Where a workload's unions keep their upper, work and merged dirs."""
    return SCRATCH_TMPFS if name in ON_TMPFS else SCRATCH


def selected(only: str | None) -> list[str]:
    """The workloads ``--only`` names (comma-separated name prefixes); all of them without it."""
    return [n for n in WORKLOADS if not only or any(n.startswith(p) for p in only.split(","))]


def pass_label(name: str, p: int, passes: int) -> str:
    """A workload's name with its pass: cold and warm for those that run twice."""
    return name + (" cold" if p == 0 and passes == 2 else " warm" if p else "")


def workload_args(repeat: bool = True) -> argparse.Namespace:
    """The benches' command line: ``--only`` (comma-separated workload name prefixes) and, where the
    runs repeat, ``--repeat``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", help="comma-separated workload name prefixes")
    if repeat:
        parser.add_argument("--repeat", type=int, default=1)
    return parser.parse_args()


@contextmanager
def fresh_union(kind: str, prefix: str, root: str = REPO, where: str = SCRATCH) -> Iterator[Union]:
    """A new union of ``kind`` on the scratch filesystem (or ``where``: see ``scratch_for``), mounted
    (a strata kind from the unionfs under ``root``); unmounted and removed afterwards."""
    assert is_mounted(SCRATCH), "unions are made inside scratch_fs()"
    u = Union(kind, tempfile.mkdtemp(prefix=prefix, dir=where), root)
    try:
        u.mount()
        yield u
    finally:
        if is_mounted(u.merged):
            u.unmount()
        shutil.rmtree(u.base, ignore_errors=True)


def each_pass(kinds: list[str], only: str | None, prefix: str) -> Iterator[tuple[str, str, Union, Callable[[], None]]]:
    """(pass label, kind, its union, the pass to run) for each selected workload, each kind on a
    fresh union, cold then warm; the union goes once its passes are done."""
    for name in selected(only):
        fn, rel, passes = WORKLOADS[name]
        for kind in kinds:
            with fresh_union(kind, prefix, where=scratch_for(name)) as u:
                target = os.path.join(u.merged, rel)
                for p in range(passes):
                    yield pass_label(name, p, passes), kind, u, functools.partial(fn, target)


def pairwise(ours: list[float], theirs: list[float]) -> str:
    """The ratio of each run's two times (the kinds of one run follow each other, so they share the
    machine's mood), as ``median (lowest-highest)``: on this noisy host, a row whose range spans 1.0
    is level with fuse-overlayfs."""
    ratios = sorted(a / b for a, b in zip(ours, theirs, strict=True))
    return f"{statistics.median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})"


def main() -> None:
    args = workload_args()
    if os.geteuid() != 0:
        sys.exit("bench: kernel overlayfs needs root")
    ensure_inputs()
    results: dict[tuple[str, str], list[float]] = {}
    mount_times: dict[str, list[float]] = {k: [] for k in KINDS}
    answer_times: dict[str, list[float]] = {k: [] for k in KINDS}
    umount_times: dict[str, list[float]] = {k: [] for k in KINDS}
    forked: list[tuple[float, float]] = []
    floors: list[tuple[float, float]] = []
    names = selected(args.only)
    with scratch_fs():
        for _ in range(args.repeat):
            for name in names:
                fn, rel, passes = WORKLOADS[name]
                for kind in KINDS:  # side by side, in one run
                    if kind == "strata volatile" and name not in WRITING:
                        continue
                    with fresh_union(kind, "ubench-", where=scratch_for(name)) as u:
                        target = os.path.join(u.merged, rel)
                        for p in range(passes):
                            start = time.perf_counter()
                            fn(target)
                            label = pass_label(name, p, passes)
                            results.setdefault((label, kind), []).append(time.perf_counter() - start)
                    if u.mount_time is not None and u.answer_time is not None:
                        mount_times[kind].append(u.mount_time)
                        answer_times[kind].append(u.answer_time)
                    if u.unmount_time is not None:
                        umount_times[kind].append(u.unmount_time)
            base = tempfile.mkdtemp(prefix="ubench-", dir=SCRATCH)
            try:
                forked.append(forked_mount_latency(base))
            finally:
                shutil.rmtree(base, ignore_errors=True)
            floors.append(interpreter_floor())
    labels = list(dict.fromkeys(label for label, _ in results))
    print(
        f"{'workload':<36}{'kernel s':>10}{'fuse-ovl x':>12}{'strata x':>10}{'no-pt x':>10}{'volatile x':>12}"
        f"   strata/fuse-ovl, each run"
    )
    for label in labels:
        k = statistics.median(results[(label, "kernel")])
        f = statistics.median(results[(label, "fuse-overlayfs")]) / k
        s = statistics.median(results[(label, "strata")]) / k
        n = statistics.median(results[(label, "strata no-passthrough")]) / k
        v = results.get((label, "strata volatile"))
        volatile = f"{statistics.median(v) / k:>11.2f}x" if v else f"{'-':>12}"
        print(
            f"{label:<36}{k:>10.3f}{f:>11.2f}x{s:>9.2f}x{n:>9.2f}x{volatile}   "
            f"{pairwise(results[(label, 'strata')], results[(label, 'fuse-overlayfs')])}"
        )
    for what, times in (
        ("mount latency", mount_times),
        ("mount, until it answers", answer_times),
        ("unmount latency", umount_times),
    ):
        k = statistics.median(times["kernel"])
        print(
            f"{what:<36}{k:>10.3f}{statistics.median(times['fuse-overlayfs']) / k:>11.2f}x"
            f"{statistics.median(times['strata']) / k:>9.2f}x"
            f"{statistics.median(times['strata no-passthrough']) / k:>9.2f}x{'':>12}   "
            f"{pairwise(times['strata'], times['fuse-overlayfs'])}"
        )
    # strata's column above is ``python -m unionfs`` (an interpreter and its imports); the runner forks
    # a daemon from a process that has them already. The last two rows are what any Python command
    # pays before it can mount, in the same units.
    kernel = statistics.median(mount_times["kernel"])
    for what, times in (
        ("mount, forked (the runner): ready", [f[0] for f in forked]),
        ("mount, forked: until it answers", [f[1] for f in forked]),
        ("floor: python -c pass", [f[0] for f in floors]),
        ("floor: python, import trio+pyfuse3", [f[1] for f in floors]),
    ):
        print(f"{what:<36}{kernel:>10.3f}{'-':>12}{statistics.median(times) / kernel:>9.2f}x{'-':>10}")


if __name__ == "__main__":
    main()
