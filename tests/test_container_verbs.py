"""The container verbs of issue 19 against real containers: create, attach (and -it's detach keys),
rename, pause/unpause, stats, events, container/image/system prune, system df, and --format's Go
templates for ps, images and inspect. Bad input: one line, nothing left behind."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time

import pytest
from helpers import REPO, STRATA, strata, wait_for
from test_cli_exec import in_pty

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root (rootless: test_rootless_verbs.py)")


def inspect(root: str, template: str, ref: str) -> str:
    return strata(root, "inspect", "-f", template, ref).out.strip()


def popen(root: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [*STRATA, "--root", root, *args], cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, **kwargs
    )


def read_until(stream, token: bytes, timeout: float = 30) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while token not in seen:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([stream], [], [], left)[0], seen
        chunk = os.read(stream.fileno(), 4096)
        assert chunk, seen
        seen += chunk
    return seen


# -- create, rename ---------------------------------------------------------------------------------
def test_create_makes_a_container_that_start_runs(rootdir):
    cid = strata(rootdir, "create", "--name", "made", "-e", "X=1", "bb", "sh", "-c", "echo made-$X").out.strip()
    assert len(cid) == 64 and inspect(rootdir, "{{.State.Status}}", "made") == "created"
    assert strata(rootdir, "ps", "-a", "--format", "{{.Names}} {{.Status}}").out == "made Created\n"
    res = strata(rootdir, "start", "-a", "made")
    assert res.out == "made-1\n"
    assert inspect(rootdir, "{{.State.Status}} {{.State.ExitCode}}", "made") == "exited 0"
    res = strata(rootdir, "create", "-d", "bb", "true", check=False)
    assert res.code == 125 and res.err.startswith("strata: unknown flag: -d")
    res = strata(rootdir, "create", "--name", "made", "bb", "true", check=False)
    assert res.code == 125 and "is already in use" in res.err
    assert strata(rootdir, "ps", "-aq").out.split() == [cid[:12]]


def test_rename_gives_a_new_name_and_keeps_the_rest(rootdir):
    cid = strata(rootdir, "run", "-d", "--name", "old", "bb", "sleep", "300").out.strip()
    strata(rootdir, "run", "--name", "other", "bb", "true")
    assert strata(rootdir, "rename", "old", "new").out == ""
    assert inspect(rootdir, "{{.Id}} {{.Name}} {{.State.Running}}", "new") == f"{cid} /new true"
    assert strata(rootdir, "inspect", "old", check=False).code == 1
    assert strata(rootdir, "exec", "new", "true").code == 0
    for args, message in (
        (("new", "new"), "Error: Renaming a container with the same name as its current name"),
        (("new", "other"), 'Error: Conflict. The container name "/other" is already in use by container "'),
        (("new", "bad name"), "Error: Invalid container name (bad name), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"),
        (("ghost", "x"), "Error: No such container: ghost"),
    ):
        res = strata(rootdir, "rename", *args, check=False)
        assert res.code == 125 and res.err.startswith(message), res
    assert sorted(strata(rootdir, "ps", "-a", "--format", "{{.Names}}").out.split()) == ["new", "other"]


# -- attach, -it and the detach keys ------------------------------------------------------------------
def test_run_it_detaches_on_the_keys_and_attach_takes_it_back(rootdir):
    master, slave = os.openpty()
    proc = popen(
        rootdir,
        "run",
        "-it",
        "--name",
        "shell",
        "bb",
        "sh",
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    try:
        seen = b""
        deadline = time.monotonic() + 30
        while b"# " not in seen:
            assert time.monotonic() < deadline and select.select([master], [], [], 30)[0], seen
            seen += os.read(master, 4096)
        os.write(master, b"echo in-$((6*7))\n")
        while b"in-42" not in seen:
            assert select.select([master], [], [], 30)[0], seen
            seen += os.read(master, 4096)
        os.write(master, b"\x10\x11")  # Ctrl-P Ctrl-Q
        assert proc.wait(timeout=30) == 0
        rest = b""
        while select.select([master], [], [], 0.5)[0]:
            try:
                rest += os.read(master, 4096)
            except OSError:
                break
        assert b"read escape sequence" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert inspect(rootdir, "{{.State.Running}}", "shell") == "true"  # still running, detached
    strata(rootdir, "stop", "-t", "1", "shell")


def test_detach_keys_are_checked_and_taken_as_given(rootdir):
    res = strata(rootdir, "run", "--detach-keys", "ctrl-", "bb", "true", check=False)
    assert (res.code, res.err) == (125, "Error: Invalid detach keys (ctrl-) provided\n")
    code, out = in_pty(
        rootdir, "run", "-it", "--rm", "--detach-keys", "ctrl-x,y", "bb", "sh", keys=b"echo one\x18y"
    )  # Ctrl-X then y: detach
    assert code == 0 and "read escape sequence" in out
    strata(rootdir, "rm", "-f", *strata(rootdir, "ps", "-aq").out.split())


def test_attach_relays_output_input_and_the_exit_code(rootdir):
    strata(
        rootdir,
        "create",
        "-i",
        "--name",
        "echoer",
        "bb",
        "sh",
        "-c",
        "echo ready; while read line; do echo got-$line; done; exit 6",
    )
    strata(rootdir, "start", "echoer")
    proc = popen(rootdir, "attach", "echoer", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"hello\n")
        proc.stdin.flush()
        assert b"got-hello" in read_until(proc.stdout, b"got-hello")
        proc.stdin.close()  # attach's end of input is not the container's (Docker's StdinOnce is run's)
        assert inspect(rootdir, "{{.State.Running}}", "echoer") == "true"
        strata(rootdir, "kill", "echoer")
        assert proc.wait(timeout=30) == 137  # the container's exit code
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    res = strata(rootdir, "attach", "echoer", check=False)
    assert (res.code, res.err) == (125, "Error: You cannot attach to a stopped container, start it first\n")


def test_attach_to_a_terminal_container_types_into_it(rootdir):
    strata(
        rootdir,
        "create",
        "-it",
        "--name",
        "tty",
        "bb",
        "sh",
        "-c",
        "while :; do echo tick; read -t 1 line && echo got-$line && exit 3; done",
    )
    strata(rootdir, "start", "tty")
    code, out = in_pty(rootdir, "attach", "tty", keys=b"word\r", after=b"tick")
    assert code == 3 and "got-word" in out, out


# -- pause ------------------------------------------------------------------------------------------
def test_pause_freezes_and_unpause_thaws(rootdir):
    cid = strata(
        rootdir, "run", "-d", "--name", "ticker", "bb", "sh", "-c", "while :; do date +%s%N > /t; done"
    ).out.strip()
    assert strata(rootdir, "pause", "ticker").out == "ticker\n"
    if os.path.isdir("/sys/fs/cgroup/freezer"):  # v1 (or hybrid)
        with open(f"/sys/fs/cgroup/freezer/strata/{cid}/freezer.state") as f:
            assert f.read().strip() == "FROZEN"
    else:  # v2 alone
        with open(f"/sys/fs/cgroup/strata/{cid}/cgroup.events") as f:
            assert "frozen 1\n" in f.read()
    assert inspect(rootdir, "{{.State.Status}} {{.State.Paused}} {{.State.Running}}", "ticker") == "paused true true"
    assert strata(rootdir, "ps", "--format", "{{.Status}}").out.strip().endswith("(Paused)")
    assert strata(rootdir, "ps", "-f", "status=paused", "-q").out.strip() == cid[:12]
    merged = os.path.join(rootdir, "containers", cid, "merged", "t")
    with open(merged) as f:
        frozen = f.read()
    with open(merged) as f:
        assert f.read() == frozen  # nothing runs
    res = strata(rootdir, "exec", "ticker", "true", check=False)
    assert res.code == 125 and "is paused, unpause the container before exec" in res.err
    res = strata(rootdir, "pause", "ticker", check=False)
    assert res.code == 1 and res.err == f"Error: Container {cid} is already paused\n"
    strata(rootdir, "unpause", "ticker")
    assert inspect(rootdir, "{{.State.Status}} {{.State.Paused}}", "ticker") == "running false"
    wait_for(lambda: open(merged).read() != frozen, what="the thawed loop writing again")
    strata(rootdir, "pause", "ticker")
    strata(rootdir, "stop", "-t", "1", "ticker")  # a paused container stops too (thawed for its signal)
    assert inspect(rootdir, "{{.State.Status}}", "ticker") == "exited"
    res = strata(rootdir, "unpause", "ticker", check=False)
    assert res.code == 1 and res.err == f"Error: Container {cid} is not paused\n"
    res = strata(rootdir, "pause", "ticker", check=False)
    assert res.code == 1 and res.err == f"Error: Container {cid} is not running\n"


# -- stats ------------------------------------------------------------------------------------------
def test_stats_shows_cpu_memory_pids_and_io(rootdir):
    strata(
        rootdir,
        "run",
        "-d",
        "--name",
        "busy",
        "-m",
        "64m",
        "bb",
        "sh",
        "-c",
        # /written once dd has ended and the second process runs (the shell's own redirection: no
        # third process); then the busy loop
        "dd if=/dev/zero of=/big bs=1M count=8 2>/dev/null; sleep 300 & : > /written; while :; do :; done",
    )
    strata(rootdir, "run", "-d", "--name", "idle", "bb", "sleep", "300")
    wait_for(lambda: strata(rootdir, "exec", "busy", "test", "-e", "/written", check=False).code == 0, what="the write")
    lines = strata(rootdir, "stats", "--no-stream").out.splitlines()
    assert lines[0].split() == [
        "CONTAINER",
        "ID",
        "NAME",
        "CPU",
        "%",
        "MEM",
        "USAGE",
        "/",
        "LIMIT",
        "MEM",
        "%",
        "NET",
        "I/O",
        "BLOCK",
        "I/O",
        "PIDS",
    ]
    rows = {
        json.loads(line)["Name"]: json.loads(line)
        for line in strata(rootdir, "stats", "--no-stream", "--format", "json").out.splitlines()
    }
    assert set(rows) == {"busy", "idle"}
    busy, idle = rows["busy"], rows["idle"]
    assert float(busy["CPUPerc"].rstrip("%")) > 10 and float(idle["CPUPerc"].rstrip("%")) < 5
    assert busy["MemUsage"].endswith(" / 64MiB") and busy["PIDs"] == "2" and idle["PIDs"] == "1"
    assert busy["BlockIO"].endswith("MB") and busy["NetIO"].count(" / ") == 1
    strata(rootdir, "stop", "-t", "0", "idle")
    out = strata(rootdir, "stats", "--no-stream", "--format", "{{.Name}}:{{.CPUPerc}}:{{.MemUsage}}", "idle").out
    assert out.startswith("idle:0.00%:0B / ")  # a stopped container: nothing in use
    res = strata(rootdir, "stats", "--no-stream", "ghost", check=False)
    assert (res.code, res.err) == (125, "Error: No such container: ghost\n")


# -- events -----------------------------------------------------------------------------------------
def test_events_follow_the_life_of_containers_as_json_lines(rootdir):
    began = time.time()
    # --since: what was logged while `events` was still starting (seconds under the lab's TCG), then
    # what comes: a `run` right after the Popen logged its create before `events` followed the log
    proc = popen(
        rootdir,
        "events",
        "--since",
        str(began - 1),
        "--format",
        "json",
        "-f",
        "container=watched",
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        strata(rootdir, "run", "-d", "--name", "watched", "bb", "sleep", "300")
        strata(rootdir, "run", "--rm", "bb", "true")  # another container: filtered out
        strata(rootdir, "stop", "-t", "0", "watched")
        strata(rootdir, "rm", "watched")
        seen = read_until(proc.stdout, b'"destroy"')
    finally:
        proc.kill()
        proc.wait()
    events = [json.loads(line) for line in seen.decode().splitlines()]
    assert [e["Action"] for e in events] == ["create", "start", "kill", "kill", "die", "stop", "destroy"]
    die = events[4]
    assert die["Type"] == "container" and die["Actor"]["Attributes"]["exitCode"] == "137"
    assert die["Actor"]["Attributes"]["name"] == "watched" and die["from"] == "bb" and die["time"] >= int(began)
    # replayed from the log: --since and --until, Docker's line
    out = strata(rootdir, "events", "--since", str(began - 1), "--until", "0s", "-f", "event=die").out.splitlines()
    assert len(out) == 2 and all(" container die " in line for line in out)  # watched's, and the --rm one's
    assert any(line.endswith(" (exitCode=137, image=bb, name=watched)") for line in out)
    res = strata(rootdir, "events", "-f", "bogus=1", check=False)
    assert (res.code, res.err) == (125, "Error: invalid filter 'bogus'\n")


# -- prune, df ----------------------------------------------------------------------------------------
def test_container_prune_removes_what_does_not_run(rootdir):
    keep = strata(rootdir, "run", "-d", "bb", "sleep", "300").out.strip()
    gone = [strata(rootdir, "run", "-d", "bb", "sh", "-c", "echo data > /file").out.strip() for _ in range(2)]
    gone.append(strata(rootdir, "create", "bb", "true").out.strip())
    for cid in gone[:2]:
        strata(rootdir, "wait", cid)
    labelled = strata(rootdir, "create", "-l", "keep=yes", "bb", "true").out.strip()
    out = strata(rootdir, "container", "prune", "-f", "--filter", "until=1h").out
    assert out == "Total reclaimed space: 0B\n"  # none is an hour old
    res = strata(rootdir, "container", "prune", input=b"n\n")
    assert res.out == "WARNING! This will remove all stopped containers.\nAre you sure you want to continue? [y/N] "
    out = strata(rootdir, "container", "prune", "-f").out
    lines = out.splitlines()
    assert lines[0] == "Deleted Containers:" and sorted(lines[1:5]) == sorted([*gone, labelled])
    assert lines[-1].startswith("Total reclaimed space: ") and lines[-1] != "Total reclaimed space: 0B"
    assert strata(rootdir, "ps", "-aq", "--no-trunc").out.split() == [keep]


def test_image_prune_removes_dangling_or_unused_images(rootdir):
    strata(rootdir, "run", "--name", "src", "bb", "sh", "-c", "echo x > /x")
    dangling = strata(rootdir, "commit", "src").out.strip()  # untagged
    tagged = strata(rootdir, "commit", "src", "kept").out.strip()
    used = strata(rootdir, "commit", "src", "inuse").out.strip()
    strata(rootdir, "create", "--name", "user", "inuse", "true")
    out = strata(rootdir, "image", "prune", "-f").out.splitlines()
    assert out[0] == "Deleted Images:" and f"deleted: {dangling}" in out
    assert out[-1].startswith("Total reclaimed space: ")
    ids = strata(rootdir, "images", "-q", "--no-trunc").out.split()
    assert dangling not in ids and tagged in ids and used in ids
    out = strata(rootdir, "image", "prune", "-a", "-f").out.splitlines()
    assert "untagged: kept:latest" in out and f"deleted: {tagged}" in out
    ids = strata(rootdir, "images", "-q", "--no-trunc").out.split()
    assert tagged not in ids and used in ids  # a container holds it: it stays (and so does bb, under it)
    res = strata(rootdir, "image", "prune", input=b"\n")
    assert res.out.startswith("WARNING! This will remove all dangling images.\n")


def test_system_df_and_system_prune(rootdir):
    strata(rootdir, "run", "-d", "--name", "running", "bb", "sleep", "300")
    strata(rootdir, "run", "--name", "done", "-v", "/data", "bb", "sh", "-c", "head -c 5000 /dev/zero > /blob")
    out = strata(rootdir, "system", "df").out.splitlines()
    assert out[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    rows = {line[:15].strip(): line[15:].split() for line in out[1:]}
    assert rows["Images"][:2] == ["1", "1"]
    assert (
        rows["Containers"][:2] == ["2", "1"]
        and rows["Containers"][2] == "5kB"
        and rows["Containers"][3:] == ["5kB", "(100%)"]
    )
    assert rows["Local Volumes"][:2] == ["1", "1"] and rows["Build Cache"] == ["0", "0", "0B", "0B"]
    doc = [json.loads(line) for line in strata(rootdir, "system", "df", "--format", "json").out.splitlines()]
    assert [d["Type"] for d in doc] == ["Images", "Containers", "Local Volumes", "Build Cache"]
    out = strata(rootdir, "system", "prune", "-f", "--volumes").out
    assert "Deleted Containers:" in out and "Deleted Volumes:" in out and out.endswith("B\n")
    assert strata(rootdir, "ps", "-a", "--format", "{{.Names}}").out == "running\n"
    assert strata(rootdir, "volume", "ls", "-q").out == ""


# -- --format ---------------------------------------------------------------------------------------
def test_format_takes_go_templates_for_ps_images_and_inspect(rootdir):
    cid = strata(rootdir, "run", "-d", "--name", "web", "-l", "tier=front", "bb", "sleep", "300").out.strip()
    assert strata(rootdir, "ps", "--format", '{{.ID}} {{.Names}} {{.Label "tier"}}').out == f"{cid[:12]} web front\n"
    table = strata(rootdir, "ps", "--format", "table {{.ID}}\\t{{.Names}}\\t{{.State}}").out.splitlines()
    assert table[0].split() == ["CONTAINER", "ID", "NAMES", "STATE"] and table[1].split() == [
        cid[:12],
        "web",
        "running",
    ]
    row = json.loads(strata(rootdir, "ps", "--format", "json").out)
    assert row["Names"] == "web" and row["State"] == "running" and "Label" not in row
    assert strata(rootdir, "images", "--format", "{{.Repository}}:{{.Tag}}").out == "bb:latest\n"
    assert strata(rootdir, "images", "--format", "table {{.Repository}}\\t{{.Tag}}").out.split() == [
        "REPOSITORY",
        "TAG",
        "bb",
        "latest",
    ]
    assert json.loads(inspect(rootdir, "{{json .State}}", "web"))["Status"] == "running"
    assert inspect(rootdir, "{{range $k, $v := .Config.Labels}}{{$k}}={{$v}}{{end}}", "web") == "tier=front"
    assert inspect(rootdir, "{{if .State.Running}}up{{else}}down{{end}} {{.Name | upper}}", "web") == "up /WEB"
    address = inspect(rootdir, "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "web")
    assert address.count(".") == 3
    for args in (
        ("ps", "--format", "{{.Nope}}"),
        ("inspect", "-f", "{{range .State}}", "web"),
        ("images", "--format", "{{bogus}}"),
    ):
        res = strata(rootdir, *args, check=False)
        assert res.code in (1, 125) and res.err.startswith("Error: template parsing error: ") and res.out == "", res
