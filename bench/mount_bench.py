"""Mount latency of one container's union, as an engine pays it per container start, side by side in
one run with kernel overlayfs and fuse-overlayfs, as multiples of kernel overlayfs (this machine is
shared and noisy: ratios, not seconds). The lowers are unionfs_bench's (a Debian minbase and a layer
of big files), given as containers-storage gives them: symlinks (its ``l/`` links); each mount gets
a fresh upper and work dir.

  kernel             mount -t overlay overlay -o lowerdir=...,upperdir=...,workdir=... M
  fuse-overlayfs     fuse-overlayfs -o ... M
  strata-unionfs     the launcher (``unionfs/bin/strata-unionfs`` as pip installs it, pointed at this
                     checkout), through its warm mount server: what containers-storage execs as its
                     mount_program
  pip's console script  the same through the wrapper pip writes for a ``[project.scripts]`` entry
                     (which imports ``re``): what the launcher saves
  python -m unionfs  a cold mount: an interpreter that imports trio and pyfuse3 first
  forked             ``fork_serve`` from a process with all of it imported (the runner's way)

Two times each: until the command returns, and until a first stat inside has come back. The kinds
are interleaved, run by run; the last column is strata-unionfs over kernel overlayfs run by run
(median and range). The floor rows are what any Python command pays: the interpreter alone, and the
launcher's own imports (``unionfs.client``).

Usage: ``python bench/mount_bench.py [--runs 30]`` as root.
"""

from __future__ import annotations

import argparse
import compileall
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)

from podman_bench import launcher  # noqa: E402
from unionfs_bench import EXTRA, OUT, ROOTFS, ensure_inputs, is_mounted  # noqa: E402

from unionfs.mount import daemon_pid, fork_serve  # noqa: E402

ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
KINDS = ["kernel", "fuse-overlayfs", "strata-unionfs", "pip's console script", "python -m unionfs", "forked"]
# what ``[project.scripts]`` would install instead of unionfs/bin/strata-unionfs: pip's wrapper imports re
CONSOLE_SCRIPT = """#!{python}
import re
import sys
sys.path.insert(0, {repo!r})
from unionfs.client import main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(main())
"""


def wait_gone(pid: int | None) -> None:
    if pid is None:
        return
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        select.select([pidfd], [], [], 30)
    finally:
        os.close(pidfd)


def one_mount(kind: str, base: str, script: str) -> tuple[float, float]:
    links = os.path.join(base, "l")
    os.makedirs(links)
    os.symlink(EXTRA, os.path.join(links, "A"))
    os.symlink(ROOTFS, os.path.join(links, "B"))
    upper, work, merged = (os.path.join(base, n) for n in ("diff", "work", "merged"))
    for d in (upper, work, merged):
        os.mkdir(d)
    opts = f"lowerdir={links}/A:{links}/B,upperdir={upper},workdir={work}"
    command = {
        "kernel": ["mount", "-t", "overlay", "overlay", "-o", opts, merged],
        "fuse-overlayfs": ["fuse-overlayfs", "-o", opts, merged],
        "strata-unionfs": [script, "-o", opts, merged],
        "pip's console script": [script + "-console", "-o", opts, merged],
        "python -m unionfs": [sys.executable, "-m", "unionfs", "-o", opts, merged],
    }.get(kind)
    start = time.perf_counter()
    pid = None
    if command is not None:
        subprocess.run(
            command,
            check=True,
            env={**ENV, "PYTHONPATH": REPO} if kind == "python -m unionfs" else ENV,
            cwd=base,
            stderr=subprocess.DEVNULL if kind == "fuse-overlayfs" else None,
        )
    else:
        pid, ready = fork_serve(merged, [f"{links}/A", f"{links}/B"], upper, work)
        with os.fdopen(ready, "rb") as pipe:
            assert pipe.read() == b"ok"
    returned = time.perf_counter() - start
    os.stat(os.path.join(merged, "etc"))
    answered = time.perf_counter() - start
    assert is_mounted(merged)
    daemon = None if kind == "kernel" else daemon_pid(merged)
    subprocess.run(
        ["umount", merged] if kind in ("kernel", "fuse-overlayfs") else ["fusermount3", "-u", merged], check=True
    )
    if pid is not None:
        os.waitpid(pid, 0)
    else:
        wait_gone(daemon)  # the next run starts with this daemon gone
    return returned, answered


def floors(script_dir: str) -> tuple[float, float]:
    imports = os.path.join(script_dir, "imports-only")
    with open(imports, "w") as f:
        f.write(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {REPO!r})\nfrom unionfs.client import main\n")
    os.chmod(imports, 0o755)
    found = []
    for command in ([sys.executable, "-c", "pass"], [imports]):
        start = time.perf_counter()
        subprocess.run(command, check=True, env=ENV)
        found.append(time.perf_counter() - start)
    return found[0], found[1]


def stop_servers(directory: str) -> None:
    for name in os.listdir(directory):
        if name.endswith(".pid"):
            with open(os.path.join(directory, name)) as f:
                pid = int(f.read())
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                spares = [int(p) for p in f.read().split()]
            for p in [pid, *spares]:
                try:
                    os.kill(p, 15)
                except ProcessLookupError:
                    pass
                wait_gone(p)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: kernel overlayfs needs root")
    ensure_inputs()
    compileall.compile_dir(os.path.join(REPO, "unionfs"), quiet=1)  # as an installed package has it
    work = tempfile.mkdtemp(prefix="mount-bench-", dir=OUT)
    servers = os.path.join(work, "servers")
    os.mkdir(servers, 0o700)
    ENV["STRATA_UNIONFS_DIR"] = servers
    script = launcher("strata-unionfs", work)
    with open(script + "-console", "w") as f:
        f.write(CONSOLE_SCRIPT.format(python=sys.executable, repo=REPO))
    os.chmod(script + "-console", 0o755)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in KINDS}
    floor: list[tuple[float, float]] = []
    try:
        one_mount("strata-unionfs", tempfile.mkdtemp(dir=work), script)  # cold: starts the server
        deadline = time.monotonic() + 30
        while not any(n.endswith(".pid") for n in os.listdir(servers)):
            assert time.monotonic() < deadline, "the mount server did not start"
            time.sleep(0.01)
        for run in range(args.runs + 1):
            for kind in KINDS:
                base = tempfile.mkdtemp(dir=work)
                t = one_mount(kind, base, script)
                shutil.rmtree(base)
                if run:  # the first round warms the caches
                    times[kind].append(t)
            floor.append(floors(work))
    finally:
        stop_servers(servers)
        shutil.rmtree(work, ignore_errors=True)
    kernel = statistics.median(t[0] for t in times["kernel"])
    print(f"mount latency, {args.runs} runs, medians; x = multiple of kernel overlayfs' mount time")
    print(f"{'':<22}{'returns ms':>12}{'x':>8}{'answers ms':>12}{'x':>8}")
    for kind in KINDS:
        r = statistics.median(t[0] for t in times[kind])
        a = statistics.median(t[1] for t in times[kind])
        print(f"{kind:<22}{r * 1000:>12.1f}{r / kernel:>8.1f}{a * 1000:>12.1f}{a / kernel:>8.1f}")
    ratios = sorted(s[0] / k[0] for s, k in zip(times["strata-unionfs"], times["kernel"], strict=True))
    print(f"strata-unionfs / kernel, run by run: {statistics.median(ratios):.1f} ({ratios[0]:.1f}-{ratios[-1]:.1f})")
    for what, values in (
        ("floor: python -c pass", [f[0] for f in floor]),
        ("floor: launcher's imports", [f[1] for f in floor]),
    ):
        v = statistics.median(values)
        print(f"{what:<22}{v * 1000:>12.1f}{v / kernel:>8.1f}")


if __name__ == "__main__":
    main()
