"""strata cp as Docker's (issue 19): both directions, running and stopped containers, tar streams
with ``-``, Docker's rules for where a copy lands, paths resolved inside the container (a symlink to
/ in it is its own /, never the host's), and one clear line for what cannot be done."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile

import pytest
from helpers import REPO, STRATA, strata, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root (rootless: test_rootless_verbs.py)")

# /ready last: run -d returns once PID 1 exec'd sh, and the tests wait for the whole set-up
SETUP = (
    "mkdir -p /data/sub && echo hi > /data/a && echo deep > /data/sub/b && ln -sf a /data/link && "
    "ln -sfn / /escape && chown 7:8 /data/a && touch /ready"
)


@pytest.fixture
def box(rootdir):
    strata(rootdir, "run", "-d", "--name", "box", "bb", "sh", "-c", SETUP + " && sleep 300")
    wait_for(lambda: strata(rootdir, "exec", "box", "test", "-e", "/ready", check=False).code == 0, what="the set-up")
    return rootdir


def test_copies_out_of_a_running_container_as_dockers(box, tmp_path):
    here = str(tmp_path)
    strata(box, "cp", "box:/data/a", here)  # into a directory: under its own name
    strata(box, "cp", "box:/data/a", f"{here}/renamed")  # a new name
    strata(box, "cp", "box:/data", f"{here}/whole")  # a directory to a new name: its contents there
    os.mkdir(f"{here}/existing")
    strata(box, "cp", "box:/data", f"{here}/existing")  # into a directory that exists: under its name
    strata(box, "cp", "box:/data/.", f"{here}/contents")  # DIR/. : the contents
    assert (tmp_path / "a").read_text() == "hi\n" and (tmp_path / "renamed").read_text() == "hi\n"
    assert (tmp_path / "a").stat().st_uid == 0  # what is copied here is the caller's
    assert (tmp_path / "whole" / "sub" / "b").read_text() == "deep\n"
    assert os.readlink(tmp_path / "whole" / "link") == "a"  # symlinks as they are
    assert (tmp_path / "existing" / "data" / "a").read_text() == "hi\n"
    assert sorted(os.listdir(tmp_path / "contents")) == ["a", "link", "sub"]


def test_paths_resolve_inside_the_container(box, tmp_path):
    """/escape -> / in the container: copying /escape/etc/hostname gives the container's file."""
    strata(box, "cp", "box:/escape/etc/hostname", str(tmp_path / "h"))
    assert (tmp_path / "h").read_text() == strata(box, "exec", "box", "cat", "/etc/hostname").out
    (tmp_path / "in.txt").write_text("put\n")
    strata(box, "cp", str(tmp_path / "in.txt"), "box:/escape/tmp/")
    assert strata(box, "exec", "box", "cat", "/tmp/in.txt").out == "put\n"
    assert not os.path.exists("/tmp/in.txt") or open("/tmp/in.txt").read() != "put\n"


def test_copies_into_a_container_as_dockers(box, tmp_path):
    src = tmp_path / "tree"
    (src / "deeper").mkdir(parents=True)
    (src / "f").write_text("file\n")
    (src / "deeper" / "g").write_text("g\n")
    os.chown(src / "f", 1234, 1234)
    strata(box, "cp", str(src / "f"), "box:/data/")  # into a directory
    strata(box, "cp", str(src / "f"), "box:/data/a")  # over a file
    strata(box, "cp", str(src), "box:/newdir")  # a directory to a new name
    strata(box, "cp", "-a", str(src / "f"), "box:/kept")  # -a: the owner kept
    out = strata(box, "exec", "box", "sh", "-c", "cat /data/f /data/a /newdir/deeper/g; stat -c %u /data/f /kept").out
    assert out.split() == ["file", "file", "g", "0", "1234"]
    res = strata(box, "cp", str(src), "box:/data/a", check=False)
    assert (res.code, res.err) == (125, "Error: cannot copy directory to file\n")
    res = strata(box, "cp", str(src / "f"), "box:/nowhere/x", check=False)
    assert (res.code, res.err) == (125, "Error: Could not find the file /nowhere in container box\n")
    res = strata(box, "cp", str(tmp_path / "missing"), "box:/", check=False)
    assert (res.code, res.err) == (125, f"Error: lstat {tmp_path / 'missing'}: no such file or directory\n")


def test_tar_streams_both_ways(box):
    raw = subprocess.run(
        [*STRATA, "--root", box, "cp", "box:/data", "-"],
        capture_output=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        names = sorted(m.name for m in tar)
        owner = tar.getmember("data/a").uid
    assert names == ["data", "data/a", "data/link", "data/sub", "data/sub/b"] and owner == 7
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("streamed/x")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"x!\n"))
    strata(box, "cp", "-", "box:/tmp", input=buf.getvalue())
    assert strata(box, "exec", "box", "cat", "/tmp/streamed/x").out == "x!\n"
    res = strata(box, "cp", "-", "box:/data/a", input=buf.getvalue(), check=False)
    assert (res.code, res.err) == (125, 'Error: destination "box:/data/a" must be a directory\n')
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        info = tarfile.TarInfo("../../outside")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"!"))
    res = strata(box, "cp", "-", "box:/tmp", input=evil.getvalue(), check=False)
    assert res.code == 125 and res.err.startswith("Error: ")


def test_a_stopped_container_is_copied_from_and_into(box, tmp_path):
    strata(box, "stop", "-t", "0", "box")
    strata(box, "cp", "box:/data/sub", str(tmp_path / "sub"))
    assert (tmp_path / "sub" / "b").read_text() == "deep\n"
    (tmp_path / "late").write_text("while stopped\n")
    strata(box, "cp", str(tmp_path / "late"), "box:/data/")
    assert "A /data/late" in strata(box, "diff", "box").out.splitlines()
    strata(box, "start", "box")
    assert strata(box, "exec", "box", "cat", "/data/late").out == "while stopped\n"
    with open("/proc/self/mountinfo") as f:
        assert sum(os.path.join(box, "containers") in line for line in f) == 1  # the running one's union only


def test_bad_cp_arguments_are_one_line(box):
    for args, message in (
        (("box:/a", "box:/b"), "copying between containers is not supported"),
        (("a", "b"), "must specify at least one container source"),
        (("box:/nope", "/tmp/x"), "Could not find the file /nope in container box"),
        (("ghost:/a", "/tmp/x"), "No such container: ghost"),
    ):
        res = strata(box, "cp", *args, check=False)
        assert (res.code, res.out, res.err) == (125, "", f"Error: {message}\n"), args
