"""diff, commit and export: what a container changed, as a new layer or as a whole tree."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile

import pytest
from helpers import strata, wait_for

from unionfs import metacopy

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")


def _status(pid: int) -> str:
    with open(f"/proc/{pid}/status") as f:
        return f.read()


def test_diff_lists_added_changed_and_deleted(rootdir):
    strata(
        rootdir,
        "run",
        "--name",
        "ch",
        "bb",
        "sh",
        "-c",
        "echo new > /tmp/new; echo more >> /etc/passwd; rm /etc/group; mkdir -p /srv/d; rm -r /root",
    )
    assert strata(rootdir, "diff", "ch").out.splitlines() == [
        "C /etc",
        "D /etc/group",
        "C /etc/passwd",
        "D /root",
        "A /srv",
        "A /srv/d",
        "C /tmp",
        "A /tmp/new",
    ]


def test_commit_adds_one_layer_with_history(rootdir):
    strata(rootdir, "run", "--name", "cool", "bb", "/bin/sh", "-c", "echo 'cool content' > /tmp/cool-file")
    image_id = strata(
        rootdir, "commit", "-m", "keep it cool", "-a", "me", "-c", 'CMD ["cat", "/tmp/cool-file"]', "cool", "fridge"
    ).out.strip()
    doc = json.loads(strata(rootdir, "inspect", "fridge").out)[0]
    base = json.loads(strata(rootdir, "inspect", "bb").out)[0]
    assert doc["Id"] == image_id and doc["Parent"] == base["Id"]
    assert doc["RootFS"]["Layers"][:-1] == base["RootFS"]["Layers"] and len(doc["RootFS"]["Layers"]) == 2
    assert doc["Config"]["Cmd"] == ["cat", "/tmp/cool-file"] and doc["Author"] == "me"
    top = strata(rootdir, "history", "--no-trunc", "fridge").out.splitlines()[1]
    assert "/bin/sh -c echo 'cool content' > /tmp/cool-file" in top and "13B" in top and "keep it cool" in top
    tree = strata(rootdir, "images", "--tree").out.splitlines()
    assert tree[1].startswith("  └─") and "Size: 13B" in tree[1] and "Tags: fridge:latest" in tree[1]
    assert strata(rootdir, "run", "--rm", "fridge").out == "cool content\n"  # the new CMD


def test_same_changes_give_the_same_layer_digest(rootdir):
    strata(rootdir, "run", "--name", "once", "bb", "sh", "-c", "echo same > /tmp/f; touch -d @1000 /tmp/f /tmp")
    one = json.loads(strata(rootdir, "inspect", strata(rootdir, "commit", "once").out.strip()).out)[0]
    two = json.loads(strata(rootdir, "inspect", strata(rootdir, "commit", "once").out.strip()).out)[0]
    assert one["RootFS"]["Layers"][-1] == two["RootFS"]["Layers"][-1]


def test_commit_of_a_running_container_pauses_it(rootdir):
    strata(rootdir, "run", "-d", "--name", "busy", "bb", "sh", "-c", "echo started > /tmp/s; exec sleep 1000")
    # run returns once PID 1 exec'd sh, maybe before the echo: what commit must find is there first
    wait_for(
        lambda: strata(rootdir, "exec", "busy", "cat", "/tmp/s", check=False).out == "started\n",
        what="the container's first write",
    )
    image = strata(rootdir, "commit", "busy", "snap").out.strip()
    assert image.startswith("sha256:")
    state = json.loads(strata(rootdir, "inspect", "busy").out)[0]["State"]
    assert state["Running"] and state["Status"] == "running"  # thawed again (a frozen group reads "paused")
    # asleep in sleep 1000 again (a v1-frozen task reads D; a thawed one may run a moment first)
    wait_for(lambda: "State:\tS" in _status(state["Pid"]), what="PID 1 asleep again")
    assert strata(rootdir, "run", "--rm", "snap", "cat", "/tmp/s").out == "started\n"


def test_export_and_import_round_trip(rootdir, tmp_path):
    strata(rootdir, "run", "--name", "ex", "bb", "sh", "-c", "echo x > /tmp/x; rm /etc/group")
    out = tmp_path / "ex.tar"
    strata(rootdir, "export", "ex", "-o", str(out))
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
    assert {"tmp/x", "bin/busybox", "etc/passwd"} <= names and "etc/group" not in names
    assert not any(os.path.basename(n).startswith(".wh.") for n in names)
    strata(rootdir, "import", str(out), "flat")
    assert strata(rootdir, "run", "--rm", "flat", "cat", "/tmp/x").out == "x\n"
    assert len(json.loads(strata(rootdir, "inspect", "flat").out)[0]["RootFS"]["Layers"]) == 1
    res = subprocess.run(["tar", "-tf", str(out)], capture_output=True, text=True, check=True)
    assert "tmp/x" in res.stdout


def test_commit_export_and_mount_carry_the_data_a_metacopy_left_below(rootdir, tmp_path):
    """A container's union copies a chmod'ed or touched file's inode alone (``unionfs.metacopy``):
    commit, export and ``strata mount`` take its data from the image's layer, and ship no record."""
    strata(rootdir, "run", "--name", "meta", "bb", "sh", "-c", "chmod 600 /etc/passwd; touch -d @1000 /etc/group")
    passwd = strata(rootdir, "run", "--rm", "bb", "cat", "/etc/passwd").out
    group = strata(rootdir, "run", "--rm", "bb", "cat", "/etc/group").out
    assert passwd and group
    upper = json.loads(strata(rootdir, "inspect", "meta").out)[0]["GraphDriver"]["Data"]["UpperDir"]
    for name in ("passwd", "group"):  # the union left their data below: the test is about that
        assert metacopy.recorded(f"{upper}/etc/{name}") is not None, name
    image = strata(rootdir, "commit", "meta").out.strip()
    assert strata(rootdir, "run", "--rm", image, "cat", "/etc/passwd", "/etc/group").out == passwd + group
    assert (
        strata(rootdir, "run", "--rm", image, "stat", "-c", "%a %Y", "/etc/passwd", "/etc/group").out
        == f"600 {os.lstat(f'{upper}/etc/passwd').st_mtime_ns // 10**9}\n644 1000\n"
    )
    out = tmp_path / "meta.tar"
    strata(rootdir, "export", "meta", "-o", str(out))
    with tarfile.open(out) as tar:
        member = tar.getmember("etc/passwd")
        assert member.mode == 0o600 and tar.extractfile(member).read().decode() == passwd
        assert not any(k.endswith(metacopy.XATTR) for m in tar.getmembers() for k in m.pax_headers)
    where = strata(rootdir, "mount", "meta").out.strip()
    try:
        with open(os.path.join(where, "etc", "passwd")) as f:
            assert f.read() == passwd
    finally:
        strata(rootdir, "umount", "meta")


def test_a_build_step_that_only_chmods_ships_the_files_data(rootdir, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM bb\nRUN chmod 600 /etc/passwd\n")
    strata(rootdir, "build", "-t", "chmodded", str(tmp_path))
    assert (
        strata(rootdir, "run", "--rm", "chmodded", "cat", "/etc/passwd").out
        == strata(rootdir, "run", "--rm", "bb", "cat", "/etc/passwd").out
    )
    assert strata(rootdir, "run", "--rm", "chmodded", "stat", "-c", "%a", "/etc/passwd").out == "600\n"


def test_diff_reads_only_the_directories_on_changed_paths(tmp_path, monkeypatch):
    """diff's cost grows with the change: a big image costs no more than a small one."""
    from runner import layerdiff
    from unionfs.layers import LayerSet

    lower = tmp_path / "lower"
    for i in range(300):  # a wide image: 300 directories of 10 files
        d = lower / f"d{i:03}"
        d.mkdir(parents=True)
        for j in range(10):
            (d / f"f{j}").write_text("x")
    upper = tmp_path / "upper"
    (upper / "d007").mkdir(parents=True)
    (upper / "d007" / "new").write_text("n")
    (upper / ".wh.d100").write_text("")
    reads = []
    original = LayerSet._lower_dir
    monkeypatch.setattr(
        LayerSet, "_lower_dir", lambda self, layer, rel: (reads.append(rel), original(self, layer, rel))[1]
    )
    assert layerdiff.changes(str(upper), [str(lower)]) == [("C", "/d007"), ("A", "/d007/new"), ("D", "/d100")]
    assert sorted(set(reads)) == ["", "d007"]  # the root and the one changed directory, nothing else
