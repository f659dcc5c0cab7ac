"""The signals a supervisor forwards to PID 1 (``runner.forwarding``): one that comes before its
receiver listens waits for it, and none stays blocked in the processes it forks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO, strata

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root (rootless is another issue)")

# `strata run` in this process (no zygote), with the supervisor's forwarder made to start listening
# only once PID 1 has printed its first line, and a SIGHUP sent to the supervisor just before: the
# order the output pumps and the forwarder may run in, made certain
_HANG_UP_BEFORE_LISTENING = r"""
import os, signal, sys
import trio
from runner import jsonlog, supervisor
from runner.cli import main

first_line = []

def printed():
    if not first_line:
        first_line.append(trio.Event())
    return first_line[0]

write = jsonlog.JsonLog.write

def write_then_hang_up(log, stream, data):
    write(log, stream, data)
    if b"ready" in data and not printed().is_set():
        os.kill(os.getpid(), signal.SIGHUP)  # PID 1 traps it by now; no receiver exists yet
        printed().set()

forward = supervisor.Supervisor._forward_signals

async def listen_late(self, **task_status):
    await printed().wait()
    await forward(self, **task_status)

jsonlog.JsonLog.write = write_then_hang_up
supervisor.Supervisor._forward_signals = listen_late
sys.exit(main(sys.argv[1:]))
"""


def test_a_hang_up_before_the_supervisor_listens_still_reaches_pid_1(rootdir):
    """It used to kill the supervisor by its default action (and the container with it: exit 255)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _HANG_UP_BEFORE_LISTENING,
            "--root",
            rootdir,
            "run",
            "--network",
            "none",
            "--name",
            "early",
            "bb",
            "sh",
            "-c",
            "trap 'exit 9' HUP; echo ready; while :; do sleep 1; done",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
        stdout=subprocess.PIPE,
    )
    try:
        out, _ = proc.communicate(timeout=120)  # a bound on a lost signal, not a wait for one
    finally:
        if proc.poll() is None:
            proc.kill()  # PID 1 dies with its supervisor
            proc.wait()
    assert (proc.returncode, out) == (9, b"ready\n")
    assert json.loads(strata(rootdir, "inspect", "early").out)[0]["State"]["ExitCode"] == 9


def _blocked(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("SigBlk:")).split()[1], 16)


def test_pid_1_and_the_union_daemon_start_with_no_signal_blocked(rootdir):
    """The supervisor holds the signals it forwards only once it has forked them: a blocked signal
    would stay blocked in them (across exec too), and neither could be stopped by it."""
    strata(rootdir, "run", "-d", "--network", "none", "--name", "open", "bb", "sleep", "1000")
    try:
        cid = json.loads(strata(rootdir, "inspect", "open").out)[0]["Id"]
        with open(os.path.join(rootdir, "containers", cid, "state.json")) as f:
            state = json.load(f)
        assert (_blocked(state["Pid"]), _blocked(state["UnionPid"])) == (0, 0)
    finally:
        strata(rootdir, "rm", "-f", "open")
