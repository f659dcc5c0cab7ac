"""What the union's daemon is asked during ``podman run --rm IMAGE true``, fuse-overlayfs against
strata-unionfs as podman's mount program: the FUSE requests the kernel sends while the container
starts and stops, counted by kind, and how long the kernel waited for their answers in all, from
the kernel's own tracepoints (``fuse:fuse_request_send`` and ``fuse:fuse_request_end``, Linux 6.x),
so the daemons run untraced. It tells the mount program's share of a container start apart from
its exec: ``bench/mount_bench.py`` times that.

The setups are podman_bench's (a podman of their own each, the same busybox image), runs
interleaved after two warm-up runs each. Every FUSE connection of the host is counted while a
run lasts: run it on a host that has no other FUSE mount at work.

Usage: ``python bench/podman_requests.py [--runs 5]`` as root (podman 4.3, runc, fuse-overlayfs).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from podman_bench import RUN, Podman, engines  # noqa: E402

TRACING = "/sys/kernel/tracing"
SETUPS: list[tuple[str, str, str | None]] = [
    ("runc + fuse-overlayfs", "runc", "fuse-overlayfs"),
    ("runc + strata-unionfs", "runc", "strata-unionfs"),
    ("strata-oci + strata-unionfs", "strata-oci", "strata-unionfs"),
]
_EVENT = re.compile(r"\s(\d+\.\d+): fuse_request_(send|end): connection (\d+) req (\d+)(?: opcode \d+ \((\w+)\))?")


class Trace:
    """The fuse request events, switched on around one command; the tracing state is put back."""

    def __init__(self) -> None:
        self.mounted = not os.path.isdir(os.path.join(TRACING, "events"))
        if self.mounted:
            subprocess.run(["mount", "-t", "tracefs", "tracefs", TRACING], check=True)
        if not os.path.isdir(os.path.join(TRACING, "events", "fuse")):
            self.close()
            sys.exit("bench: this kernel has no fuse tracepoints (events/fuse)")
        self.saved = {name: self._read(name) for name in ("tracing_on", "events/fuse/enable")}

    def _read(self, name: str) -> str:
        with open(os.path.join(TRACING, name)) as f:
            return f.read().strip()

    def _write(self, name: str, value: str) -> None:
        with open(os.path.join(TRACING, name), "w") as f:
            f.write(value)

    def around(self, run: Podman) -> tuple[float, collections.Counter[str], float, int]:
        """Run ``podman RUN`` traced: (seconds, requests by kind, seconds the kernel waited for
        answers, connections seen)."""
        self._write("trace", "")
        self._write("events/fuse/enable", "1")
        self._write("tracing_on", "1")
        try:
            elapsed = run(*RUN)
        finally:
            self._write("tracing_on", "0")
            self._write("events/fuse/enable", "0")
        sent: dict[tuple[str, str], float] = {}
        kinds: collections.Counter[str] = collections.Counter()
        waited = 0.0
        connections = set()
        with open(os.path.join(TRACING, "trace")) as f:
            for line in f:
                m = _EVENT.search(line)
                if m is None:
                    continue
                at, event, key = float(m[1]), m[2], (m[3], m[4])
                connections.add(m[3])
                if event == "send":
                    sent[key] = at
                    kinds[m[5].removeprefix("FUSE_")] += 1
                elif key in sent:
                    waited += at - sent.pop(key)
        return elapsed, kinds, waited, len(connections)

    def close(self) -> None:
        for name, value in getattr(self, "saved", {}).items():
            self._write(name, value)
        self._write("trace", "")
        if self.mounted:
            subprocess.run(["umount", TRACING], check=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    seen: dict[str, list[tuple[float, collections.Counter[str], float, int]]] = {label: [] for label, _, _ in SETUPS}
    with engines("podman-requests-", SETUPS) as podmans:
        trace = Trace()
        try:
            for _ in range(2):
                for podman in podmans:
                    podman(*RUN)
            for _ in range(args.runs):
                for (label, _, _), podman in zip(SETUPS, podmans, strict=True):
                    seen[label].append(trace.around(podman))
        finally:
            trace.close()
    print(f"podman run --rm IMAGE true, {args.runs} traced runs each, interleaved; medians")
    print(f"{'':<30}{'run ms':>8}{'requests':>10}{'waited ms':>11}{'conns':>7}   by kind")
    for label, runs in seen.items():
        kinds = sorted({k for _, c, _, _ in runs for k in c}, key=lambda k: -sum(c[k] for _, c, _, _ in runs))
        by_kind = ", ".join(f"{k} {statistics.median(c[k] for _, c, _, _ in runs):g}" for k in kinds)
        print(
            f"{label:<30}{statistics.median(r[0] for r in runs) * 1000:>8.0f}"
            f"{statistics.median(sum(r[1].values()) for r in runs):>10g}"
            f"{statistics.median(r[2] for r in runs) * 1000:>11.1f}"
            f"{max(r[3] for r in runs):>7}   {by_kind}"
        )


if __name__ == "__main__":
    main()
