"""strata as an ordinary user (issue 17): each test runs strata as the session's throwaway user (the
``rootless`` fixture, tests/rootless_support.py) against a store in that user's home."""

from __future__ import annotations

import json
import os
import select
import shutil
import stat
import subprocess
import tempfile
import termios

import pytest
from helpers import snapshot, strata
from rootless_support import mounts_below

IMAGE = "bb:latest"


@pytest.fixture
def scratch(rootless, request):
    """A fresh directory of the user's, in its home; removed after the test (as root: the session's
    teardown removes whatever a failed removal leaves, with the home)."""
    path = rootless.make_dir(os.path.join(rootless.home, f"t-{request.node.name}"[:80]))
    yield path
    if not mounts_below([path]):  # a mount left behind is the session teardown's: it kills, then unmounts
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def rootfs(rootless, scratch):
    """A busybox rootfs the user owns (the host's busybox-static, as conftest's fixtures use)."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("busybox-static is required (make test installs it)")
    path = os.path.join(scratch, "rootfs")
    for d in ("bin", "etc", "tmp"):
        os.makedirs(os.path.join(path, d))
    shutil.copy(busybox, os.path.join(path, "bin", "busybox"))
    for applet in ("sh", "ls", "cat", "true", "sleep", "id", "hostname", "grep", "touch", "head", "mknod", "unshare"):
        os.symlink("busybox", os.path.join(path, "bin", applet))
    with open(os.path.join(path, "etc", "hostname"), "w") as f:
        f.write("strata\n")
    os.chmod(os.path.join(path, "tmp"), 0o1777)
    rootless.give(path)
    return path


@pytest.fixture
def store(rootless, scratch, rootfs):
    """The user's store, with the busybox rootfs imported as bb:latest by the user."""
    root = os.path.join(scratch, "store")
    out = rootless.strata(root, "import", rootfs, IMAGE, "--change", 'CMD ["/bin/sh"]').out.strip()
    assert out.startswith("sha256:") and len(out) == 71
    return root


def _own_tree(rootless, path):
    """Every object below ``path`` belongs to the user: nothing strata made there is root's."""
    foreign = [
        os.path.join(d, n)
        for d, dirs, files in os.walk(path)
        for n in dirs + files
        if os.lstat(os.path.join(d, n)).st_uid != rootless.uid
    ]
    assert foreign == []


def test_rootless_import_images_history_inspect(rootless, store):
    _own_tree(rootless, store)
    (record,) = [json.loads(line) for line in rootless.strata(store, "images", "--format", "json").out.splitlines()]
    assert (record["Repository"], record["Tag"]) == ("bb", "latest")
    table = rootless.strata(store, "images").out.splitlines()
    assert table[0].split()[:2] == ["REPOSITORY", "TAG"] and table[1].split()[:3] == ["bb", "latest", record["ID"]]
    history = rootless.strata(store, "history", IMAGE).out.splitlines()
    assert len(history) == 2 and history[1].split()[0] == record["ID"] and "Imported from " in history[1]
    (inspected,) = json.loads(rootless.strata(store, "inspect", IMAGE).out)
    assert inspected["Id"].startswith("sha256:" + record["ID"])
    assert inspected["RepoTags"] == [IMAGE] and inspected["Config"]["Cmd"] == ["/bin/sh"]
    assert inspected["GraphDriver"]["Data"]["UpperDir"].startswith(store + "/")


def test_rootless_save_load_round_trip(rootless, scratch, store):
    archive = os.path.join(scratch, "bb.tar")
    rootless.strata(store, "save", "-o", archive, IMAGE)
    assert os.stat(archive).st_uid == rootless.uid
    other, third = os.path.join(scratch, "other"), os.path.join(scratch, "third")
    rootless.strata(other, "load", "-i", archive)
    with open(archive, "rb") as f:
        rootless.strata(third, "load", input=f.read())  # and from stdin
    ids = {json.loads(rootless.strata(r, "inspect", IMAGE).out)[0]["Id"] for r in (store, other, third)}
    assert len(ids) == 1
    # the loaded image saves to the same bytes
    again = os.path.join(scratch, "again.tar")
    rootless.strata(other, "save", "-o", again, IMAGE)
    with open(archive, "rb") as a, open(again, "rb") as b:
        assert a.read() == b.read()
    for r in (other, third):
        assert rootless.strata(r, "system", "check").code == 0
        _own_tree(rootless, r)


def test_rootless_system_check(rootless, store):
    res = rootless.strata(store, "system", "check")
    assert res.code == 0 and res.err == ""


def test_rootless_mount_read_umount(rootless, store):
    point = rootless.strata(store, "mount", IMAGE).out.strip()
    try:
        assert point.startswith(os.path.join(store, "mounts") + "/")
        assert mounts_below([point]) == [point]  # a FUSE mount made by the user, through fusermount3
        assert rootless.run("cat", os.path.join(point, "etc", "hostname")).out == "strata\n"
        assert rootless.run("ls", point).out.split() == ["bin", "etc", "tmp"]
        assert rootless.strata(store, "umount", IMAGE).out.strip() == IMAGE
        assert mounts_below([point]) == [] and not os.path.exists(point)
    finally:
        if mounts_below([point]):
            rootless.run("fusermount3", "-u", point, check=False)


def _private(rootless, path):
    st = os.lstat(path)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == rootless.uid
    assert stat.S_IMODE(st.st_mode) == 0o700, f"{path} is {stat.S_IMODE(st.st_mode):04o}"


def test_rootless_runtime_dir_is_private(rootless, store):
    _private(rootless, rootless.zygote_dir)  # made by the launcher: the fixture only names it


def test_rootless_store_root_is_private(rootless, store):
    _private(rootless, store)


@pytest.fixture
def roots_store(busybox_rootfs):
    """A store of root's (made by strata as root) in a directory everyone may traverse."""
    parent = tempfile.mkdtemp(prefix="strata-rootless-rootstore-", dir="/tmp")
    try:
        os.chmod(parent, 0o755)
        root = os.path.join(parent, "store")
        strata(root, "import", busybox_rootfs, IMAGE)
        yield root
    finally:
        shutil.rmtree(parent)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("images",), id="images"),
        pytest.param(("history", IMAGE), id="history"),
        pytest.param(("inspect", IMAGE), id="inspect"),
        pytest.param(("system", "check"), id="system-check"),
        pytest.param(("save", "-o", "{out}", IMAGE), id="save"),
        pytest.param(("mount", IMAGE), id="mount"),
        pytest.param(("import", "{rootfs}", "mine:1"), id="import"),
        pytest.param(("rmi", IMAGE), id="rmi"),
    ],
)
def test_rootless_cannot_use_roots_store(rootless, scratch, rootfs, roots_store, args):
    """Root's store, in a directory the user may traverse: refused in one line, nothing changed or made."""
    before = snapshot(roots_store)
    mine = snapshot(scratch)
    out = os.path.join(scratch, "out.tar")
    res = rootless.strata(roots_store, *(a.format(out=out, rootfs=rootfs) for a in args), check=False)
    assert res.code != 0, f"strata {' '.join(args)} as {rootless.name} on root's store: {res.out}"
    assert len(res.err.strip().splitlines()) == 1, res.err  # one clear line
    assert "Traceback" not in res.err
    assert snapshot(roots_store) == before
    assert snapshot(scratch) == mine and not os.path.exists(out)
    assert mounts_below([roots_store]) == []


def test_rootless_containers_run_exec_stop_and_go(rootless, store):
    """The user is root in a user namespace of its own (0 is the user), with the same fences; exec
    joins that namespace; stop and rm work without any cgroup."""
    res = rootless.strata(
        store,
        "run",
        "--rm",
        "--hostname",
        "box",
        IMAGE,
        "sh",
        "-c",
        "id -u; head -1 /proc/self/uid_map; hostname; grep -c . /proc/self/status >/dev/null; "
        "touch /sys/x 2>&1 | head -1; grep Seccomp: /proc/self/status; exit 3",
        check=False,
    )
    assert res.code == 3, res.err
    out = res.out.splitlines()
    assert out[0] == "0" and out[1].split() == ["0", str(rootless.uid), "1"] and out[2] == "box"
    assert "Read-only file system" in out[3] and out[4].split() == ["Seccomp:", "2"]
    cid = rootless.strata(store, "run", "-d", "--name", "bg", IMAGE, "sleep", "1000").out.strip()
    assert len(cid) == 64 and "bg" in rootless.strata(store, "ps").out
    assert rootless.strata(store, "exec", "bg", "sh", "-c", "id -u; echo $$").out.split()[0] == "0"
    rootless.strata(store, "stop", "-t", "1", "bg")
    state = json.loads(rootless.strata(store, "inspect", "bg").out)[0]["State"]
    assert (state["Status"], state["ExitCode"]) == ("exited", 137)
    rootless.strata(store, "rm", "bg")
    assert rootless.strata(store, "ps", "-aq").out == ""


def test_rootless_run_maps_the_subuid_range(rootless, store):
    """Issue 17: 0 is the user, 1..N its /etc/subuid and /etc/subgid range (newuidmap/newgidmap)."""
    expected = [["0", str(rootless.uid), "1"], ["1", str(rootless.subid_start), str(rootless.subid_count)]]
    res = rootless.strata(store, "run", "--rm", IMAGE, "cat", "/proc/self/uid_map", check=False)
    assert res.code == 0, res.err
    assert [line.split() for line in res.out.splitlines()] == expected
    expected[0][1] = str(rootless.gid)
    res = rootless.strata(store, "run", "--rm", IMAGE, "cat", "/proc/self/gid_map", check=False)
    assert [line.split() for line in res.out.splitlines()] == expected


def test_rootless_without_subordinate_ids_maps_one_id_and_says_so(rootless, store):
    """No range of the user's in /etc/subuid and /etc/subgid: the container gets the user alone, as
    root, and run says so in one line (as rootless podman warns)."""
    saved = {}
    for path in ("/etc/subuid", "/etc/subgid"):
        with open(path) as f:
            saved[path] = f.read()
        with open(path, "w") as f:  # (the user's own line only, by its exact name)
            f.write(
                "".join(
                    line for line in saved[path].splitlines(keepends=True) if not line.startswith(f"{rootless.name}:")
                )
            )
    try:
        res = rootless.strata(store, "run", "--rm", IMAGE, "cat", "/proc/self/uid_map", check=False)
    finally:
        for path, text in saved.items():
            with open(path, "w") as f:
                f.write(text)
    assert res.code == 0, res.err
    assert [line.split() for line in res.out.splitlines()] == [["0", str(rootless.uid), "1"]]
    assert res.err == (
        f"WARNING: no subordinate ids for {rootless.name} in /etc/subuid and /etc/subgid: the "
        "container has one id, root (the image's other owners show as nobody)\n"
    )


def test_rootless_without_fuse_says_what_is_missing(rootless, store):
    """/dev/fuse closed to the user (mode 0600, as Debian's may be changed to): run and mount fail in
    one line that names it, and leave nothing behind."""
    mode = os.stat("/dev/fuse").st_mode
    os.chmod("/dev/fuse", 0o600)
    try:
        for args in (("run", "--rm", IMAGE, "true"), ("run", "--name", "kept", IMAGE, "true"), ("mount", IMAGE)):
            res = rootless.strata(store, *args, check=False)
            assert res.code != 0 and len(res.err.strip().splitlines()) == 1, res.err
            assert "/dev/fuse" in res.err, res.err
        assert rootless.strata(store, "ps", "-aq").out == "" and mounts_below([store]) == []
    finally:
        os.chmod("/dev/fuse", stat.S_IMODE(mode))


def test_rootless_limits_that_cannot_be_enforced_are_said_once(rootless, store):
    res = rootless.strata(store, "run", "--rm", "-m", "64m", "--cpu-shares", "512", IMAGE, "true", check=False)
    assert res.code == 0, res.err
    assert res.err.count("\n") == 1 and res.err.startswith("WARNING: ") and "cgroup" in res.err


def test_rootless_containers_keep_the_same_fences(rootless, store):
    """As for root's containers (tests/test_isolation.py): no host block device (here the user
    namespace forbids even the mknod), no new namespaces (seccomp, loaded whether no_new_privs is set,
    as Docker's default leaves it, or not), the host's keyring out of reach."""
    for flags, nnp in (((), "0"), (("--security-opt", "no-new-privileges"), "1")):
        res = rootless.strata(
            store,
            "run",
            "--rm",
            *flags,
            IMAGE,
            "sh",
            "-c",
            "mknod /dev/l b 7 0 2>&1; unshare -U true 2>&1; cat /proc/self/status | grep NoNewPrivs",
            check=False,
        )
        assert res.code == 0, res.err
        out = res.out.splitlines()
        assert "Operation not permitted" in out[0] and "Operation not permitted" in out[1], out
        assert out[2].split() == ["NoNewPrivs:", nnp]


def test_rootless_mounts_a_stopped_container_for_inspection(rootless, store):
    rootless.strata(store, "run", "--name", "done", IMAGE, "sh", "-c", "echo mine > /made")
    where = rootless.strata(store, "mount", "done").out.strip()
    assert rootless.run("cat", os.path.join(where, "made")).out == "mine\n"
    rootless.strata(store, "umount", "done")
    assert mounts_below([store]) == []
    rootless.strata(store, "rm", "done")


def test_rootless_readme_tour(rootless, scratch):
    """The README's tour, top to bottom, typed by the ordinary user in a checkout of its own (the
    examples, and a .venv/bin/strata that runs the session's copy of the code)."""
    from test_readme import _commands, _section  # (the root suite's parser: one reading of the README)

    here = rootless.make_dir(os.path.join(scratch, "checkout"))
    shutil.copytree(
        os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"),
        os.path.join(here, "examples"),
    )
    bin_dir = os.path.join(here, ".venv", "bin")
    os.makedirs(bin_dir)
    with open(os.path.join(bin_dir, "strata"), "w") as f:
        f.write(
            f"#!/bin/sh\nPYTHONPATH={rootless.src} STRATA_ZYGOTE_DIR={rootless.zygote_dir} "
            f'exec {rootless.python} -m runner "$@"\n'
        )
    os.chmod(os.path.join(bin_dir, "strata"), 0o755)
    rootless.give(here)
    commands = _commands(_section("Tour"))
    script = ["set -euo pipefail"] + [line for i, c in enumerate(commands) for line in (f"echo '@@step {i}'", c)]
    res = rootless.run(
        "bash", "-c", "\n".join(script), cwd=here, env={"STRATA_ROOT": os.path.join(scratch, "store")}, check=False
    )
    steps = res.out.split("@@step ")[1:]
    assert res.code == 0, f"stopped at `{commands[len(steps) - 1]}` ({res.code}): {res.out[-1500:]}{res.err[-1500:]}"
    assert len(steps) == len(commands)
    for i, command in enumerate(commands):
        if "# -> " in command:
            assert command.rsplit("# -> ", 1)[1].strip() in steps[i], (command, steps[i])
    assert rootless.strata(os.path.join(scratch, "store"), "ps", "-aq").out == ""


def test_rootless_walkthrough(rootless, scratch):
    """make demo's walkthrough (examples/walkthrough.sh: commit, save, load, a registry push and
    pull, run) as the ordinary user, with the session's copy of strata as its `strata`."""
    bin_dir = rootless.make_dir(os.path.join(scratch, "bin"))
    with open(os.path.join(bin_dir, "strata"), "w") as f:
        f.write(
            f"#!/bin/sh\nPYTHONPATH={rootless.src} STRATA_ZYGOTE_DIR={rootless.zygote_dir} "
            f'exec {rootless.python} -m runner "$@"\n'
        )
    os.chmod(os.path.join(bin_dir, "strata"), 0o755)
    script = os.path.join(scratch, "walkthrough.sh")
    shutil.copy(
        os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "walkthrough.sh"), script
    )
    rootless.give(scratch)
    res = rootless.run(
        "bash",
        script,
        cwd=scratch,
        check=False,
        env={"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "TMPDIR": scratch},
    )
    assert res.code == 0, res.out[-3000:] + res.err[-3000:]
    assert "walkthrough: all steps passed" in res.out and "cool content" in res.out


def test_make_deps_says_in_one_line_when_dev_fuse_is_closed_to_users():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    said = {}
    try:
        for probe in (0o600, 0o666):
            os.chmod("/dev/fuse", probe)
            done = subprocess.run(
                ["make", "-s", "--no-print-directory", "deps"], cwd=repo, capture_output=True, text=True, timeout=900
            )
            assert done.returncode == 0, done.stderr
            said[probe] = [line for line in done.stdout.splitlines() if "/dev/fuse" in line]
    finally:
        os.chmod("/dev/fuse", mode)
    assert said[0o666] == []
    assert said[0o600] == [
        "note: /dev/fuse is 600: ordinary users cannot run strata (rootless) until it is open to "
        "them: chmod 0666 /dev/fuse (Debian's default)"
    ]


def test_rootless_run_flags_on_a_terminal_and_off(rootless, store):
    """The run flags of the walkthrough as the user: -e, -w, -u, --network none|host, -i from a
    pipe, and -it on a terminal (a pty of the container's own devpts, at the client's size)."""
    res = rootless.strata(
        store,
        "run",
        "--rm",
        "-e",
        "A=1",
        "-w",
        "/tmp",
        "-u",
        "0:0",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "echo $A $(pwd) $(id -u); cat /proc/net/dev | grep -c :",
        check=False,
    )
    assert res.code == 0, res.err
    assert res.out.split() == ["1", "/tmp", "0", "1"]  # loopback alone
    res = rootless.strata(store, "run", "--rm", "--network", "host", IMAGE, "sh", "-c", "cat /proc/net/dev | grep -c :")
    assert int(res.out) > 1  # the host's devices
    assert rootless.strata(store, "run", "--rm", "-i", IMAGE, "cat", input="piped\n").out == "piped\n"
    master, slave = os.openpty()
    termios.tcsetwinsize(slave, (30, 100))
    env = {**rootless.environment(), "PYTHONPATH": rootless.src, "STRATA_ZYGOTE_DIR": rootless.zygote_dir}
    proc = subprocess.Popen(
        [
            "setpriv",
            f"--reuid={rootless.uid}",
            f"--regid={rootless.gid}",
            "--init-groups",
            "--",
            rootless.python,
            "-m",
            "runner",
            "--root",
            store,
            "run",
            "--rm",
            "-it",
            IMAGE,
            "sh",
            "-c",
            "tty; stty size; exit 3",
        ],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=rootless.home,
        start_new_session=True,
    )
    os.close(slave)
    out = b""
    try:
        while True:  # until the last holder of the pty closes it
            ready, _, _ = select.select([master], [], [], 60)
            assert ready, out
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=60) == 3, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert out.replace(b"\r", b"").split(b"\n")[:2] == [b"/dev/pts/0", b"30 100"], out
