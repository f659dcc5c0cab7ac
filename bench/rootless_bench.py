"""Rootless container start-up (issue 17), side by side in one run on the same busybox image:

  strata run --rm IMAGE /bin/true, as root          the installed ``strata``, through root's warm zygote
  ... as root, with the rootless side's Python      the same interpreter and code as the next row
  strata run --rm IMAGE /bin/true, as a user        a throwaway unprivileged user (tests/rootless_support.py),
                                                    through that user's warm zygote, store in its home
  podman run --rm IMAGE /bin/true, as that user     rootless podman, if installed: vfs storage, runc,
                                                    --network none (strata's default), storage and config
                                                    under the user's home, its $XDG_RUNTIME_DIR a short
                                                    temp dir (see podman_setup)

The image is imported once by root (the busybox-static tree runner_bench uses), saved with ``strata
save`` and loaded from that archive into the user's store and into podman's, so all sides start the
same image. Every side is spawned the same way (through ``setpriv``, which switches to the user for
the rootless sides and stays root for root's) and the sides are interleaved, so each start is an
isolated one, as in runner_bench. Reported: median and range per side, and the ratios
rootless/root (goal: within 1.3x) and strata-rootless/podman-rootless (goal: below 1.0).

The user, its subordinate ids, its processes (zygote, union daemons, podman's pause process), its
mounts and its home go again whatever happens, SIGTERM included (rootless_support's context manager);
so do root's zygotes, containers and work directory, podman's run dir and its lock in /dev/shm.

Usage: ``python bench/rootless_bench.py [--runs 10]`` as root. podman's row is left out, with the
reason, where podman (or runc) is not installed or cannot run here.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(1, os.path.join(REPO, "tests"))  # after bench/: rootless_support (and its helpers)

from rootless_support import RootlessUser, mounts_below, rootless_user  # noqa: E402
from runner_bench import ENV, STRATA, busybox_rootfs, stop_zygote  # noqa: E402

IMAGE = "bb:latest"
START_TIMEOUT = 60.0  # seconds for one container start: a hung side stops the bench, not the machine
# --network none: strata's default (podman's would start slirp4netns); --ulimit: podman's default RLIMIT_NOFILE
# (1048576) is above this host's hard limit, which an unprivileged podman cannot raise
PODMAN_RUN = ["run", "--rm", "--pull", "never", "--network", "none", "--ulimit", "nofile=1024:1024"]


class BenchError(RuntimeError):
    pass


def timed(cmd: list[str], env: dict[str, str]) -> float:
    """Wall time of one run, spawned as runner_bench spawns (posix_spawn, output to /dev/null), in a
    session of its own with stdin from /dev/null (no terminal of ours for the user's processes)."""
    devnull = os.open(os.devnull, os.O_RDWR)
    err = tempfile.TemporaryFile()
    try:
        actions = [
            (os.POSIX_SPAWN_DUP2, devnull, 0),
            (os.POSIX_SPAWN_DUP2, devnull, 1),
            (os.POSIX_SPAWN_DUP2, err.fileno(), 2),
        ]
        start = time.perf_counter()
        pid = os.posix_spawnp(cmd[0], cmd, env, file_actions=actions, setsid=True)
        pidfd = os.pidfd_open(pid)
        try:
            if not select.select([pidfd], [], [], START_TIMEOUT)[0]:
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise BenchError(f"{' '.join(cmd)} took longer than {START_TIMEOUT:.0f} s: killed")
            _, status = os.waitpid(pid, 0)
            elapsed = time.perf_counter() - start
        finally:
            os.close(pidfd)
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise BenchError(f"{' '.join(cmd)} failed: {err.read().decode(errors='replace').strip()}")
        return elapsed
    finally:
        os.close(devnull)
        err.close()


def as_root(*argv: str) -> list[str]:
    """Root's sides go through setpriv too (staying root), so that every side pays the same exec."""
    return ["setpriv", "--reuid=0", "--regid=0", "--init-groups", "--", *argv]


def as_user(user: RootlessUser, *argv: str) -> list[str]:
    return ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups", "--", *argv]


def write_user_file(user: RootlessUser, path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
    os.chown(path, user.uid, user.gid)


def podman_setup(user: RootlessUser, archive: str, runtime: str) -> tuple[dict[str, str] | None, str]:
    """Rootless podman for ``user``: its own storage.conf and containers.conf in its home's
    ~/.config/containers (vfs storage in its home, runc, cgroupfs: there is no systemd session), the
    image loaded from ``archive``. ``runtime`` is podman's $XDG_RUNTIME_DIR (its run root below it): a
    short path, as /run/user/UID is, since podman's exit command (``container cleanup``, which records
    the exit) refuses a run root longer than 50 characters, and ``podman run`` then waits 20 s for an
    exit that is never recorded. (extra env and the image's name, "") where it runs, else (None, why not)."""
    podman = shutil.which("podman")
    if podman is None:
        return None, "podman is not installed (apt-get install podman runc)"
    if shutil.which("runc") is None:
        return None, "runc is not installed (apt-get install runc)"
    conf = user.make_dir(os.path.join(user.home, ".config", "containers"), 0o700)
    write_user_file(
        user,
        os.path.join(conf, "storage.conf"),
        f'[storage]\ndriver = "vfs"\ngraphroot = "{user.home}/.local/share/containers/storage"\n'
        f'runroot = "{runtime}/containers"\n',
    )
    write_user_file(
        user,
        os.path.join(conf, "containers.conf"),
        '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n',
    )
    env = {"XDG_RUNTIME_DIR": runtime}
    loaded = user.run(podman, "load", "-i", archive, env=env, check=False)
    if loaded.code != 0:
        return None, f"podman load failed: {loaded.err.strip()}"
    name = re.search(r"^Loaded image(?:\(s\))?: (\S+)", loaded.out, re.M)  # docker.io/library/bb:latest
    if name is None:
        return None, f"podman load named no image: {loaded.out.strip()}"
    started = time.monotonic()
    probe = user.run(podman, *PODMAN_RUN, name.group(1), "/bin/true", env=env, check=False, timeout=START_TIMEOUT)
    if probe.code != 0:
        return None, f"podman run failed: {probe.err.strip()}"
    if time.monotonic() - started > 10:
        return None, f"podman run took {time.monotonic() - started:.0f} s here (a wait that timed out)"
    return {**env, "image": name.group(1)}, ""


def wait_for_zygote(directory: str, what: str) -> None:
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(directory, "zygote.sock")):
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: no zygote in {directory} after 30 s")
        time.sleep(0.05)


def clean_root_side(store: str, env: dict[str, str], zygotes: list[str], work: str) -> None:
    """Root's leftovers after a failure: containers, zygotes, mounts; then the work dir."""
    if os.path.isdir(store):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            left = subprocess.run(
                [*STRATA, "--root", store, "ps", "-aq"], capture_output=True, text=True, env=env, timeout=60
            ).stdout.split()
            if left:
                subprocess.run([*STRATA, "--root", store, "rm", "-f", *left], capture_output=True, env=env, timeout=120)
    for directory in zygotes:
        stop_zygote(directory)
    for point in mounts_below([work]):
        subprocess.run(["umount", "-l", point], check=False)
    shutil.rmtree(work, ignore_errors=True)


def report(times: dict[str, list[float]], pairs: list[tuple[str, str, str]]) -> None:
    runs = len(next(iter(times.values())))
    print(f"{'start-up (' + str(runs) + ' runs each)':<40}{'median ms':>10}{'range ms':>18}")
    for name, values in times.items():
        span = f"{min(values) * 1000:.1f}-{max(values) * 1000:.1f}"
        print(f"{name:<40}{statistics.median(values) * 1000:>10.1f}{span:>18}")
    for top, bottom, goal in pairs:
        if top in times and bottom in times:
            ratio = statistics.median(times[top]) / statistics.median(times[bottom])
            print(f"{top} / {bottom}: {ratio:.2f}x ({goal})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: needs root (it creates a throwaway user)")
    os.chdir("/")  # a cwd every side may enter (the zygotes' forks take the client's)
    work = tempfile.mkdtemp(prefix="rlbench-")
    podman_run = ""
    uid: int | None = None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: the clean-up below runs all the same
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    store = os.path.join(work, "store")
    zygote = os.path.join(work, "zygote")
    same_zygote = os.path.join(work, "zygote-same-python")
    env = {**ENV, "STRATA_ZYGOTE_DIR": zygote}
    try:
        with rootless_user(REPO, log=lambda m: print(m, file=sys.stderr, flush=True)) as user:
            uid = user.uid
            os.mkdir(zygote, 0o700)
            rootfs = os.path.join(work, "rootfs")
            busybox_rootfs(rootfs)
            subprocess.run(
                [*STRATA, "--root", store, "import", rootfs, IMAGE], check=True, env=env, stdout=subprocess.DEVNULL
            )
            archive = os.path.join(user.home, "bb.tar")
            subprocess.run([*STRATA, "--root", store, "save", "-o", archive, IMAGE], check=True, env=env)
            user.give(archive)
            user_store = os.path.join(user.home, "store")
            user.strata(user_store, "load", "-i", archive)
            user_env = {**user.environment(), "PYTHONPATH": user.src, "STRATA_ZYGOTE_DIR": user.zygote_dir}
            same_env = {**ENV, "PYTHONPATH": user.src, "STRATA_ZYGOTE_DIR": same_zygote}
            run = ["run", "--rm", IMAGE, "/bin/true"]
            sides: dict[str, tuple[list[str], dict[str, str]]] = {
                "strata, root": (as_root(*STRATA, "--root", store, *run), env),
                "strata, root, the user's python": (
                    as_root(user.python, "-m", "runner", "--root", store, *run),
                    same_env,
                ),
                "strata, rootless": (as_user(user, user.python, "-m", "runner", "--root", user_store, *run), user_env),
            }
            podman_run = tempfile.mkdtemp(prefix="rlb-", dir="/tmp")  # removed below, after the user's processes
            os.chown(podman_run, user.uid, user.gid)
            podman_env, why = podman_setup(user, archive, podman_run)
            if podman_env is not None:
                image = podman_env.pop("image")
                sides["podman, rootless"] = (
                    as_user(user, "podman", *PODMAN_RUN, image, "/bin/true"),
                    {**user.environment(), **podman_env},
                )
            else:
                print(f"podman row skipped: {why}")
            for i in range(3):  # warm-up: the zygotes start, caches fill
                for cmd, side_env in sides.values():
                    timed(cmd, side_env)
                if i == 0:
                    wait_for_zygote(zygote, "root")
                    wait_for_zygote(same_zygote, "root, the user's python")
                    wait_for_zygote(user.zygote_dir, "rootless")
            times: dict[str, list[float]] = {k: [] for k in sides}
            for _ in range(args.runs):  # interleaved, so the machine's noise falls on all sides alike
                for name, (cmd, side_env) in sides.items():
                    times[name].append(timed(cmd, side_env))
            report(
                times,
                [
                    ("strata, rootless", "strata, root", "goal: within 1.3x"),
                    ("strata, rootless", "strata, root, the user's python", "same interpreter and code"),
                    ("strata, rootless", "podman, rootless", "goal: below 1.0"),
                ],
            )
    finally:
        clean_root_side(store, env, [zygote, same_zygote], work)
        if podman_run:
            shutil.rmtree(podman_run, ignore_errors=True)
        if uid is not None:  # podman's shared-memory locks, which it keeps outside its dirs
            lock = f"/dev/shm/libpod_rootless_lock_{uid}"
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(lock).st_uid == uid:
                    os.unlink(lock)


if __name__ == "__main__":
    main()
