# ruff: noqa: F401, F811 (test_oci_runtime's fixtures, imported: pytest passes them by these names)
"""strata-oci's shortcuts past argparse for what engines call once per container, each a fresh process:
the cheap verbs (state, start, kill, delete), run through ``runner/bin/strata-oci`` as pip installs it,
import none of the runtime, argparse, json, re or typing; create imports the runtime but none of those;
both read their command line as argparse does (what they do not take, the full command line answers),
read state dirs an older strata-oci wrote (no ``state.marshal``), and say and log a failure as the full
command line does, word for word. Real containers, as in test_oci_runtime."""

from __future__ import annotations

import json
import marshal
import os
import re
import signal
import subprocess
import sys

import pytest
from helpers import REPO, wait_for
from test_oci_runtime import CGROUP_PARENT, CONMON, _cgroup_dirs, _conmon, _reaped, bundle, oci, root, state

from runner import cjson
from runner.errors import RunnerError
from runner.oci import cli, control, entry, statedir

LAUNCHER = os.path.join(REPO, "runner", "bin", "strata-oci")
# what the cheap verbs must not load: the runtime and its parser, and the stdlib modules that make
# a Python command slow to start (json's decoder imports re, re and signal import enum)
HEAVY = {
    "argparse",
    "json",
    "re",
    "enum",
    "typing",
    "signal",
    "datetime",
    "shutil",
    "subprocess",
    "ctypes",
    "runner.cgroups",
    "runner.devices",
    "runner.seccomp",
    "runner.init",
    "runner.oci.cli",
    "runner.oci.runtime",
    "runner.oci.spec",
    "runner.oci.hooks",
}
# what create must not load: the parser, and what the runtime's modules import only on rarer paths
# (a console socket, rootless, an exec, an update, a profile to read, a hook to run)
HEAVY_FOR_CREATE = {
    "argparse",
    "json",
    "re",
    "enum",
    "typing",
    "collections",
    "signal",
    "socket",
    "datetime",
    "shutil",
    "subprocess",
    "runner.oci.cli",
    "runner.reaper",
}


def launched(root: str, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """``runner/bin/strata-oci`` (what pip installs, run by this interpreter), and the modules it imported."""
    res = subprocess.run(
        [sys.executable, "-X", "importtime", LAUNCHER, "--root", root, *args],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=60,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    modules = _imported(res.stderr)
    res.stderr = "".join(ln + "\n" for ln in res.stderr.splitlines() if not ln.startswith("import time:"))
    return res, modules


def _imported(stderr: str) -> set[str]:
    """The modules ``-X importtime`` listed (its first line is its header)."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith("import time:")]
    return {ln.rsplit("|", 1)[1].strip() for ln in lines[1:]}


def test_the_cheap_verbs_import_nothing_heavy_from_the_launcher(tmp_path, root, bundle):
    conmon, pid, out = _conmon(tmp_path, root, bundle(["sh", "-c", "echo started; exec sleep 100"]), "c1")
    try:
        res, modules = launched(root, "state", "c1")
        assert res.returncode == 0 and json.loads(res.stdout)["status"] == "created"
        assert "runner.oci.control" in modules and not modules & HEAVY, modules & HEAVY
        for args in (["start", "c1"], ["kill", "c1", "KILL"], ["delete", "--force", "c1"]):
            if args[0] == "kill":  # start returns once PID 1 exec'd sh: its echo may be yet to come
                wait_for(lambda: open(out).read() == "started\n", what="the container's first output")
            if args[0] == "delete":
                assert _reaped(conmon) == -signal.SIGKILL
            res, modules = launched(root, *args)
            assert res.returncode == 0 and res.stdout == "" and res.stderr == "", (args, res.stderr)
            assert not modules & HEAVY, (args, modules & HEAVY)
        assert open(out).read() == "started\n"
        assert not os.path.exists(os.path.join(root, "c1")) and _cgroup_dirs(f"{CGROUP_PARENT}/c1") == []
    finally:
        if conmon.poll() is None:
            os.kill(pid, signal.SIGKILL)
            conmon.wait(timeout=30)


def _create_launched(tmp_path, root: str, argv: list[str], cid: str) -> tuple[subprocess.Popen[str], int, set[str]]:
    """``create`` through the launcher (``argv``: what follows ``--root ROOT``), run by test_oci_runtime's
    miniature conmon with ``-X importtime``: (conmon, PID 1's pid, the modules create imported). Its
    stderr is a file: PID 1 keeps create's stdio, so a pipe would stay open as long as the container."""
    err = tmp_path / f"{cid}.err"
    with open(err, "w") as stderr:
        conmon = subprocess.Popen(
            [sys.executable, "-c", CONMON, str(tmp_path / f"{cid}.pid"), str(tmp_path / f"{cid}.out")]
            + [sys.executable, "-X", "importtime", LAUNCHER, "--root", root, *argv],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd="/",
            env={**os.environ, "PYTHONPATH": REPO},
        )
    assert conmon.stdout is not None
    line = conmon.stdout.readline().split()
    assert line[0] == "created", (line, err.read_text())
    assert int(line[2]) == conmon.pid  # PID 1 went to the caller's subreaper, as with the full command line
    return conmon, int(line[1]), _imported(err.read_text())


@pytest.mark.parametrize(
    "spelling",
    [
        ["create", "--bundle", "{bundle}", "--pid-file", "{pid_file}", "c1"],
        ["create", "--bundle={bundle}", "--pid-file={pid_file}", "--no-pivot", "--no-new-keyring", "c1"],
        ["create", "c1", "-b", "{bundle}", "--preserve-fds=0", "--pid-file", "{pid_file}"],
        ["--log-format=json", "create", "-b={bundle}", "--pid-file", "{pid_file}", "--preserve-fds", "0", "c1"],
    ],
)
def test_create_spelled_as_runc_takes_it_imports_nothing_heavy_from_the_launcher(tmp_path, root, bundle, spelling):
    b = bundle(["sh", "-c", "echo started"])
    values = {"{bundle}": b, "{pid_file}": str(tmp_path / "c1.pid")}
    argv = [re.sub("{bundle}|{pid_file}", lambda m: values[m[0]], a) for a in spelling]
    conmon, pid, modules = _create_launched(tmp_path, root, argv, "c1")
    try:
        assert "runner.oci.runtime" in modules and "runner.init" in modules
        assert not modules & HEAVY_FOR_CREATE, modules & HEAVY_FOR_CREATE
        st = state(root, "c1")
        assert st["status"] == "created" and st["pid"] == pid and st["bundle"] == b
        oci(root, "start", "c1", check=True)
        assert _reaped(conmon) == 0 and open(tmp_path / "c1.out").read() == "started\n"
        oci(root, "delete", "c1", check=True)
        assert not os.path.exists(os.path.join(root, "c1")) and _cgroup_dirs(f"{CGROUP_PARENT}/c1") == []
    finally:
        if conmon.poll() is None:
            os.kill(pid, signal.SIGKILL)
            conmon.wait(timeout=30)


@pytest.mark.parametrize(
    "argv",
    [
        ["create", "c1"],
        ["--root", "/r", "--log", "/l", "--log-format", "json", "create", "--bundle", "/b", "c1"],
        ["--root=/r", "--log=/l", "--log-format=text", "create", "--bundle=/b", "--pid-file=/p", "c1"],
        ["create", "-b", "/b", "--console-socket", "/s", "--preserve-fds", "3", "--no-pivot", "c1"],
        ["create", "-b=/b", "--console-socket=/s", "--preserve-fds=3", "--no-new-keyring", "c1"],
        ["create", "c1", "--bundle", "/b", "--bundle", "/again", "--pid-file", "p=q"],
        ["create", "--pid-file", "relative/pid", "--bundle", "b u n d l e", "c1"],
    ],
)
def test_the_create_shortcut_reads_a_command_line_as_argparse_reads_it(argv):
    """One grammar: whatever the shortcut takes, cli.py's parsers take alike."""
    quick = entry._parse(argv)
    assert quick is not None
    options, verb, flags, positionals = quick
    top = cli._top_parser().parse_args(argv)
    args = cli._verb_parser(top.verb).parse_args(top.rest)
    assert verb == top.verb == "create" and positionals == [args.id]
    assert (options.get("--root"), options.get("--log"), options.get("--log-format", "text")) == (
        top.root,
        top.log,
        top.log_format,
    )
    assert (
        flags.get("bundle", "."),
        flags.get("pid_file"),
        flags.get("console_socket"),
        int(flags.get("preserve_fds", "0")),
        "no_pivot" in flags,
        "no_new_keyring" in flags,
    ) == (args.bundle, args.pid_file, args.console_socket, args.preserve_fds, args.no_pivot, args.no_new_keyring)
    assert not (top.debug or top.systemd_cgroup or top.version or top.help)


def _logged(path: str) -> list[str]:
    """The log's lines, their times taken out (``"time": "..."`` in json, ``time="..."`` in text)."""
    with open(path) as f:
        return [re.sub(r'"time": "[^"]*"|^time="[^"]*"', "TIME", line) for line in f.read().splitlines()]


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_failed_create_says_and_logs_what_the_full_command_line_does(tmp_path, root, bundle, fmt):
    """Before anything is made (no config.json, a bad id) and after PID 1 was forked (no such
    command): one line on stderr, the same line in the log, exit 1, nothing left behind; the
    shortcut's words are cli.py's (run here as the module, past the shortcut)."""
    full = [sys.executable, "-c", "import sys; from runner.oci.cli import main; sys.exit(main())"]
    missing_command = bundle(["/no/such/command"])
    for args in (
        ["create", "--bundle", str(tmp_path / "nowhere"), "c1"],
        ["create", "--bundle", missing_command, "bad/id"],
        ["create", "--bundle", missing_command, "c1"],
    ):
        said = []
        for name, program in (("shortcut", [sys.executable, "-X", "importtime", LAUNCHER]), ("full", full)):
            log = str(tmp_path / f"{name}.log")
            res = subprocess.run(
                [*program, "--root", root, "--log", log, "--log-format", fmt, *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                cwd="/",
                timeout=60,
                env={**os.environ, "PYTHONPATH": REPO},
            )
            if name == "shortcut":
                assert "argparse" not in _imported(res.stderr)
            stderr = [ln for ln in res.stderr.splitlines() if not ln.startswith("import time:")]
            said.append((res.returncode, res.stdout, stderr, _logged(log)))
            os.unlink(log)
            assert (not os.path.isdir(root) or os.listdir(root) == []) and _cgroup_dirs(f"{CGROUP_PARENT}/c1") == []
        assert said[0] == said[1]
        code, out, stderr, logged = said[0]
        assert code == 1 and out == "" and len(stderr) == 1 and stderr[0].startswith("strata-oci: ")
        assert len(logged) == 1 and "error" in logged[0] and "TIME" in logged[0]
        if fmt == "json":
            assert json.loads(logged[0].replace("TIME", '"time": ""'))["msg"] == stderr[0].removeprefix("strata-oci: ")


def test_a_state_dir_of_an_older_strata_oci_is_read_and_deleted(tmp_path, root, bundle):
    """No state.marshal, no recorded cgroup dirs or freezer file: state.json alone, as before."""
    conmon, pid, _ = _conmon(tmp_path, root, bundle(["sleep", "100"]), "c1")
    try:
        recorded = json.loads(open(os.path.join(root, "c1", "state.json")).read())
        for key in ("dirs", "freezer"):
            del recorded["cgroup"][key]
        del recorded["oci_version"]
        with open(os.path.join(root, "c1", "state.json"), "w") as f:
            json.dump(recorded, f)
        os.unlink(os.path.join(root, "c1", statedir.FAST_STATE))
        assert state(root, "c1")["status"] == "created"
        oci(root, "start", "c1", check=True)
        assert state(root, "c1")["status"] == "running"
        oci(root, "kill", "c1", "KILL", check=True)
        assert _reaped(conmon) == -signal.SIGKILL
        st = state(root, "c1")
        assert st["status"] == "stopped" and st["pid"] == 0
        oci(root, "delete", "c1", check=True)
        assert not os.path.exists(os.path.join(root, "c1")) and _cgroup_dirs(f"{CGROUP_PARENT}/c1") == []
    finally:
        if conmon.poll() is None:
            os.kill(pid, signal.SIGKILL)
            conmon.wait(timeout=30)


def test_an_unreadable_fast_state_falls_back_to_state_json(tmp_path, root, bundle):
    conmon, pid, _ = _conmon(tmp_path, root, bundle(["sleep", "100"]), "c1")
    try:
        with open(os.path.join(root, "c1", statedir.FAST_STATE), "wb") as f:
            f.write(b"\xffnot marshal")
        st = state(root, "c1")
        assert st["status"] == "created" and st["pid"] == pid
        oci(root, "delete", "c1", check=True)
        assert _reaped(conmon) == -signal.SIGKILL
        assert not os.path.exists(os.path.join(root, "c1"))
    finally:
        if conmon.poll() is None:
            os.kill(pid, signal.SIGKILL)
            conmon.wait(timeout=30)


@pytest.mark.parametrize("spelling", [["--log", "{log}", "--log-format", "json"], ["--log={log}", "--log-format=json"]])
def test_a_cheap_verbs_error_is_one_line_and_logged_as_the_full_cli_logs_it(tmp_path, root, spelling):
    log = str(tmp_path / "log.json")
    res, _ = launched(root, *[a.replace("{log}", log) for a in spelling], "kill", "nope", "TERM")
    assert res.returncode == 1 and res.stderr == "strata-oci: container does not exist\n"
    entry = json.loads(open(log).read().splitlines()[-1])
    assert entry["level"] == "error" and entry["msg"] == "container does not exist" and entry["time"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["kill", "--bogus", "x"], "unrecognized arguments: --bogus"),
        (["delete", "x", "y"], "unrecognized arguments: y"),
        (["state"], "the following arguments are required: id"),
        (["--root"], "expected one argument"),
        (["kill", "x", "NOPE"], "unknown signal 'NOPE'"),
        (["start", "bad/id"], "invalid id format: bad/id"),
    ],
)
def test_what_the_shortcut_does_not_take_the_full_cli_answers(root, args, message):
    res, _ = launched(root, *args)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and message in res.stderr, res.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["create", "--bogus", "c1"], "unrecognized arguments: --bogus"),
        (["create", "--bundle"], "argument --bundle/-b: expected one argument"),
        (["create", "--pid-file", "--bundle", "/b", "c1"], "argument --pid-file: expected one argument"),
        (["create", "--preserve-fds", "many", "c1"], "argument --preserve-fds: invalid int value: 'many'"),
        (["create", "--no-pivot=yes", "c1"], "ignored explicit argument 'yes'"),
        (["create", "c1", "c2"], "unrecognized arguments: c2"),
        (["create"], "the following arguments are required: id"),
        (["--log-format", "yaml", "create", "c1"], "argument --log-format: invalid choice: 'yaml'"),
        (["--log-format=yaml", "state", "c1"], "argument --log-format: invalid choice: 'yaml'"),
    ],
)
def test_what_the_create_shortcut_does_not_take_argparse_answers(root, args, message):
    assert entry._parse(["--root", root, *args]) is None
    res, modules = launched(root, *args)
    assert res.returncode == 1 and res.stdout == "" and "argparse" in modules
    assert res.stderr.count("\n") == 1 and message in res.stderr, res.stderr
    assert not os.path.isdir(root) or os.listdir(root) == []


def test_systemd_cgroup_is_refused_by_create_alone(root):
    """An engine set to systemd passes --systemd-cgroup to every call: create refuses it (above, in
    test_oci_runtime), the rest go on (podman's clean-up after the refused create, say)."""
    res, _ = launched(root, "--systemd-cgroup", "delete", "--force", "nope")
    assert res.returncode == 0 and res.stderr == ""
    res, _ = launched(root, "--systemd-cgroup", "state", "nope")
    assert res.returncode == 1 and res.stderr == "strata-oci: container does not exist\n"


def test_signals_are_spelled_as_the_signal_module_spells_them():
    for sig in signal.Signals:
        for text in (sig.name, sig.name.removeprefix("SIG"), sig.name.lower(), str(sig.value)):
            assert control.parse_signal(text) == sig.value
    for number in range(signal.SIGRTMIN, signal.SIGRTMAX + 1):
        assert control.parse_signal(str(number)) == number
    for text in ("0", "32", "65", "SIG_DFL", "SIG_IGN", "NSIG", "SIGNOPE", "-9", ""):
        with pytest.raises(RunnerError, match="unknown signal"):
            control.parse_signal(text)


@pytest.mark.parametrize(
    "doc",
    [
        {"ociVersion": "1.2.0", "id": "c1", "pid": 42, "status": "running", "bundle": "/b", "annotations": {}},
        {
            "id": 'q"uote\\back\nnew\ttab\x01\x7f',
            "pid": 0,
            "flag": True,
            "none": None,
            "list": [1, "two", []],
            "annotations": {"ü": "日本", "emoji": "\U0001f600", "lone": "\udcff", "": ""},
        },
    ],
)
def test_the_state_document_is_spelled_as_json_dumps_spells_it(doc):
    assert statedir.to_json(doc) == json.dumps(doc, indent=2)


@pytest.mark.parametrize(
    "doc",
    [
        {"ociVersion": "1.2.0", "process": {"args": ["sh", "-c", "echo ü"], "terminal": False}, "n": [1, 2.5, -0.0]},
        {"z": 1, "a": {"nested": [None, True, False, "", {}, []]}, "big": 1 << 70, "float": 1e300},
        ["\U0001f600", "\udcff", 'q"uote\\back\nnew\ttab\x01\x7f', float("inf"), float("nan")],
        "just a string",
        42,
    ],
)
def test_cjson_writes_and_reads_as_json_does(doc):
    for sort_keys in (False, True):
        text = json.dumps(doc, sort_keys=sort_keys)
        assert cjson.dumps(doc, sort_keys=sort_keys) == text
        assert repr(cjson.loads(text)) == repr(json.loads(text))
        assert repr(cjson.loads(f" \n\t{text}\r\n ")) == repr(json.loads(text))


@pytest.mark.parametrize(
    "text",
    ["", "  ", "{", '{"a": 1} x', "[1,]", '"\x01"', '"unterminated', "nul", '{"a" 1}', "\ufeff{}", "1 2"],
)
def test_cjson_refuses_what_json_refuses_in_its_words(text):
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    with pytest.raises(json.JSONDecodeError) as got:
        cjson.loads(text)
    assert str(got.value) == str(expected.value)


def test_cjson_refuses_to_write_what_json_refuses():
    circular: list[object] = []
    circular.append(circular)
    for value in ({"a": {1, 2}}, {(1,): 2}, circular, object()):
        with pytest.raises((TypeError, ValueError)) as expected:
            json.dumps(value)
        with pytest.raises(type(expected.value)) as got:
            cjson.dumps(value)
        assert str(got.value) == str(expected.value)


def test_a_seccomp_program_is_generated_once_and_then_read_from_the_cache(tmp_path, root, bundle):
    """Containers with one profile (mkdir: EPERM): the first create writes the program under
    <root>/@seccomp and the next read it (a program planted there for this profile is what the
    container gets: it is read, not generated); a file that does not match (garbage, another
    profile's) is never used but written again."""
    from runner import seccomp
    from runner.oci import filters

    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    }
    cache = os.path.join(root, filters.DIRECTORY)
    for n, spoil in enumerate((None, "planted", None, b"garbage", "other")):
        cid = f"s{n}"
        b = bundle(["sh", "-c", "mkdir /tmp/x 2>&1; echo rc=$?"], cid=cid)
        config = json.loads(open(os.path.join(b, "config.json")).read())
        config["linux"]["seccomp"] = profile
        with open(os.path.join(b, "config.json"), "w") as f:
            json.dump(config, f)
        files = os.listdir(cache) if os.path.isdir(cache) else []
        if spoil == "planted":  # the program of a profile that allows everything, under this one's key
            allow = seccomp.prepare({"defaultAction": "SCMP_ACT_ALLOW"}).program
            with open(os.path.join(cache, files[0]), "wb") as f:
                f.write(
                    marshal.dumps(
                        (json.dumps(profile, sort_keys=True), allow, 0, filters._generator(), filters._library())
                    )
                )
        elif spoil == b"garbage":
            open(os.path.join(cache, files[0]), "wb").write(spoil)
        elif spoil == "other":  # a valid entry, but for another profile, under this profile's name
            other = {**profile, "defaultAction": "SCMP_ACT_KILL"}
            filters.prepare(str(tmp_path / "elsewhere"), other)
            elsewhere = os.path.join(str(tmp_path / "elsewhere"), filters.DIRECTORY)
            os.replace(os.path.join(elsewhere, os.listdir(elsewhere)[0]), os.path.join(cache, files[0]))
        conmon, pid, out = _conmon(tmp_path, root, b, cid)
        try:
            oci(root, "start", cid, check=True)
            assert _reaped(conmon) == 0
            if spoil == "planted":
                assert open(out).read() == "rc=0\n"
            else:
                assert open(out).read().endswith("rc=1\n") and "Operation not permitted" in open(out).read()
            oci(root, "delete", cid, check=True)
        finally:
            if conmon.poll() is None:
                os.kill(pid, signal.SIGKILL)
                conmon.wait(timeout=30)
        files = os.listdir(cache)
        assert len(files) == 1 and oct(os.stat(cache).st_mode & 0o777) == "0o700"
        with open(os.path.join(cache, files[0]), "rb") as f:
            key, program, flags, _generator, _library = marshal.load(f)
        assert json.loads(key) == profile
        if spoil == "planted":
            assert program == allow
            os.unlink(os.path.join(cache, files[0]))  # (the next create generates it again)
        else:
            assert program == seccomp.prepare(profile).program
