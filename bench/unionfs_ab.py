"""The union filesystem of two revisions side by side in one run: an old one (a ``git worktree`` of
``--base``, made in a temp dir and removed afterwards) against this working tree (or ``--new REV``,
another worktree: a tree others are editing may be half-way through a change), on
``unionfs_bench``'s workloads, inputs and fresh scratch ext4. The two alternate run by run (which
goes first flips each time), each on a fresh mount, so they share the machine's mood.

Per row: both medians, new/old of the medians, and new/old run by run as ``median (lowest-highest)``;
on this noisy host a row is slower only if its whole range is above 1.0 (flagged ``slower``).

The default base is the commit before unionfs/fs.py was split along its jobs (the parent of the
commit that added unionfs/inodes.py), as issue 16 asks: "no row slower than before the split".

Usage: ``python bench/unionfs_ab.py [--base REV] [--new REV] [--only NAME,NAME] [--repeat N] [--volatile]``
(as root: the scratch filesystem is a loop mount).
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
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from unionfs_bench import (  # noqa: E402
    REPO,
    WORKLOADS,
    ensure_inputs,
    fresh_union,
    pass_label,
    scratch_for,
    scratch_fs,
    selected,
)

SPLIT_STARTED = "unionfs/inodes.py"  # the split's first commit added it


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", REPO, *args], check=True, capture_output=True, text=True).stdout.strip()


def default_base() -> str:
    """The parent of the commit that first added ``SPLIT_STARTED``."""
    added = git("log", "--diff-filter=A", "--format=%H", "--", SPLIT_STARTED).splitlines()
    if not added:
        sys.exit(f"bench: no commit adds {SPLIT_STARTED}; give --base")
    return git("rev-parse", f"{added[-1]}^")


@contextmanager
def worktree(rev: str) -> Iterator[str]:
    """A detached ``git worktree`` of ``rev`` in a temp dir; removed (and pruned) afterwards."""
    tmp = tempfile.mkdtemp(prefix="unionfs-ab-")
    path = os.path.join(tmp, "tree")
    try:
        git("worktree", "add", "--detach", "--quiet", path, rev)
        try:
            yield path
        finally:
            git("worktree", "remove", "--force", path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        git("worktree", "prune")


def check_package(root: str) -> None:
    """``python -m unionfs`` run as ``Union`` runs it (cwd and PYTHONPATH ``root``) must import the
    package under ``root``, not the one the venv has installed."""
    found = subprocess.run(
        [sys.executable, "-c", "import unionfs; print(unionfs.__file__)"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": root},
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert found == os.path.join(root, "unionfs", "__init__.py"), (root, found)


def args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="the old revision (default: the commit before the split of fs.py)")
    parser.add_argument("--new", help="the new revision (default: the working tree as it is)")
    parser.add_argument("--only", help="comma-separated workload name prefixes")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each workload on each side")
    parser.add_argument("--volatile", action="store_true", help="mount both with -o volatile")
    return parser.parse_args()


def row(label: str, old: list[float], new: list[float]) -> str:
    ratios = sorted(n / o for o, n in zip(old, new, strict=True))
    flag = "slower" if ratios[0] > 1.0 else ""
    mo, mn = statistics.median(old), statistics.median(new)
    return (
        f"{label:<36}{mo:>10.3f}{mn:>10.3f}{mn / mo:>9.2f}x"
        f"   {statistics.median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f}) {flag}"
    ).rstrip()


def main() -> None:
    opts = args()
    if os.geteuid() != 0:
        sys.exit("bench: the scratch filesystem needs root")
    base = git("rev-parse", opts.base) if opts.base else default_base()
    new = git("rev-parse", opts.new) if opts.new else None  # resolved once: HEAD may move meanwhile
    kind = "strata volatile" if opts.volatile else "strata"
    ensure_inputs()
    names = selected(opts.only)
    times: dict[tuple[str, str], list[float]] = {}

    def record(label: str, side: str, seconds: float | None) -> None:
        if seconds is not None:
            times.setdefault((label, side), []).append(seconds)

    with ExitStack() as trees:
        sides = {"old": trees.enter_context(worktree(base)), "new": trees.enter_context(worktree(new)) if new else REPO}
        for root in sides.values():
            check_package(root)
        with scratch_fs():
            for r in range(opts.repeat):
                for i, name in enumerate(names):
                    fn, rel, passes = WORKLOADS[name]
                    order = ["old", "new"] if (r + i) % 2 == 0 else ["new", "old"]
                    for side in order:
                        with fresh_union(kind, f"ab-{side}-", sides[side], scratch_for(name)) as u:
                            target = os.path.join(u.merged, rel)
                            for p in range(passes):
                                start = time.perf_counter()
                                fn(target)
                                record(pass_label(name, p, passes), side, time.perf_counter() - start)
                        record("mount latency", side, u.mount_time)
                        record("mount, until it answers", side, u.answer_time)
                        record("unmount latency", side, u.unmount_time)
    print(f"old: {git('log', '-1', '--format=%h %s', base)[:100]}")
    if new:
        print(f"new: {git('log', '-1', '--format=%h %s', new)[:100]}")
    else:
        dirty = " + uncommitted changes to unionfs/" if git("status", "--porcelain", "--", "unionfs") else ""
        print(f"new: the working tree at {git('rev-parse', '--short', 'HEAD')}{dirty}")
    print(f"kind: {kind}; {opts.repeat} runs each, alternating; seconds are medians")
    print(f"{'workload':<36}{'old s':>10}{'new s':>10}{'new/old':>10}   new/old, each run")
    labels = list(dict.fromkeys(label for label, _ in times))
    for label in [lb for lb in labels if "latency" not in lb and "answers" not in lb] + [
        "mount latency",
        "mount, until it answers",
        "unmount latency",
    ]:
        print(row(label, times[(label, "old")], times[(label, "new")]))


if __name__ == "__main__":
    main()
