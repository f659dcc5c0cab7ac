"""``strata mount``: an image's layers as one read-only union mount, for inspection; ``strata umount``."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess

import pytest
from helpers import docker_v12_save, stop_process, strata, tar_bytes
from unionfs_support import is_mounted


@pytest.fixture
def image(root, tmp_path):
    """A two-layer image: the top layer replaces ``a``, deletes ``gone`` and adds ``d/y``."""
    bottom = tar_bytes(
        [
            {"name": "a", "data": b"1"},
            {"name": "gone", "data": b"g"},
            {"name": "d", "type": "dir"},
            {"name": "d/x", "data": b"x"},
        ]
    )
    top = tar_bytes(
        [
            {"name": "a", "data": b"2"},
            {"name": ".wh.gone", "data": b""},
            {"name": "d", "type": "dir"},
            {"name": "d/y", "data": b"y"},
        ]
    )
    path = tmp_path / "img.tar"
    path.write_bytes(docker_v12_save([bottom, top], ["img:1"]))
    strata(root, "load", "-i", str(path))
    yield "img:1"
    # whatever a test left: unmount by exact path, stop the daemon by pid
    records = os.path.join(root, "mounts")
    for name in os.listdir(records) if os.path.isdir(records) else []:
        if name.endswith(".json"):
            with open(os.path.join(records, name)) as f:
                record = json.load(f)
            if is_mounted(record["Mountpoint"]):
                subprocess.run(["umount", "-l", record["Mountpoint"]], check=False)
            stop_process(record["Pid"])


def _record(root):
    (name,) = [n for n in os.listdir(os.path.join(root, "mounts")) if n.endswith(".json")]
    with open(os.path.join(root, "mounts", name)) as f:
        return json.load(f)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_mount_shows_the_merged_image_read_only(root, image):
    point = strata(root, "mount", image).out.strip()
    assert point.startswith(os.path.join(root, "mounts") + "/") and is_mounted(point)
    with open(os.path.join(point, "a")) as f:
        assert f.read() == "2"  # the top layer wins
    assert sorted(os.listdir(point)) == ["a", "d"]  # the whiteout hides "gone" and does not show itself
    assert sorted(os.listdir(os.path.join(point, "d"))) == ["x", "y"]  # directories merge
    with pytest.raises(OSError) as info:
        open(os.path.join(point, "new"), "w")
    assert info.value.errno == errno.EROFS
    assert strata(root, "mount", image).out.strip() == point  # mounted once; asked again, the same
    listing = strata(root, "mount").out.splitlines()
    assert listing[0].split() == ["ID", "NAME", "MOUNTPOINT"] and listing[1].split()[1:] == [image, point]
    res = strata(root, "rmi", image, check=False)  # its layers are in use
    assert res.code == 1 and f"mount at {point}" in res.err
    pid = _record(root)["Pid"]
    assert strata(root, "umount", image).out.strip() == image
    assert not is_mounted(point) and not os.path.exists(point) and _gone(pid)
    assert os.listdir(os.path.join(root, "mounts")) == []
    strata(root, "rmi", image)  # free now


def test_mount_layer_shows_one_layer_as_stored(root, image, tmp_path):
    """``mount --layer``: the top layer's own files, its whiteout as the file it is (what
    ``ls /var/lib/docker/aufs/diff/<id>`` showed), found by a diff id prefix or a chain id; the
    image cannot be removed while its layer is mounted."""
    diff_ids = json.loads(strata(root, "inspect", image).out)[0]["RootFS"]["Layers"]
    point = strata(root, "mount", "--layer", diff_ids[1][7:19]).out.strip()
    assert is_mounted(point)
    assert sorted(os.listdir(point)) == [".wh.gone", "a", "d"] and os.listdir(os.path.join(point, "d")) == ["y"]
    with open(os.path.join(point, "a")) as f:
        assert f.read() == "2"
    listing = strata(root, "mount").out.splitlines()
    assert listing[1].split()[1:] == ["<layer>", point]
    res = strata(root, "rmi", image, check=False)
    assert res.code == 1 and f"mount at {point}" in res.err
    chain = listing[1].split()[0]  # the chain id `images --tree` shows: the same layer, mounted once
    assert strata(root, "mount", "--layer", chain).out.strip() == point
    mine = tmp_path / "bottom"
    mine.mkdir()
    assert strata(root, "mount", "--layer", diff_ids[0], str(mine)).out.strip() == str(mine)
    assert sorted(os.listdir(mine)) == ["a", "d", "gone"]
    for ref in (point, str(mine)):
        strata(root, "umount", ref)
    assert not is_mounted(point) and not is_mounted(str(mine)) and os.listdir(os.path.join(root, "mounts")) == []
    for bad, why in (("zz", "invalid layer reference"), ("0" * 64, "no such layer")):
        res = strata(root, "mount", "--layer", bad, check=False)
        assert res.code != 0 and why in res.err and len(res.err.splitlines()) == 1, res.err
    strata(root, "rmi", image)


def test_mount_at_a_chosen_directory_and_umount_by_it(root, image, tmp_path):
    point = tmp_path / "inspect here"
    point.mkdir()
    assert strata(root, "mount", image, str(point)).out.strip() == str(point)
    assert (point / "d" / "y").read_text() == "y"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = strata(root, "mount", image, str(elsewhere), check=False)
    assert (
        res.code == 1
        and res.err.strip() == f"Error: image {_record(root)['Image'][7:19]} is already mounted at {point}"
    )
    strata(root, "unmount", str(point))
    assert not is_mounted(str(point)) and point.is_dir()  # the user's directory stays


def test_a_mount_whose_daemon_died_can_still_be_unmounted(root, image):
    point = strata(root, "mount", image).out.strip()
    pid = _record(root)["Pid"]
    os.kill(pid, signal.SIGKILL)
    stop_process(pid)
    with pytest.raises(OSError) as info:
        os.listdir(point)
    assert info.value.errno == errno.ENOTCONN
    strata(root, "umount", point)
    assert not is_mounted(point) and not os.path.exists(point)


def test_bad_mount_input_gives_one_line_and_mounts_nothing(root, image, tmp_path):
    for args in (["nosuch:image"], [image, str(tmp_path / "missing")], [image, str(tmp_path / "img.tar")]):
        res = strata(root, "mount", *args, check=False)
        assert res.code == 1 and len(res.err.strip().splitlines()) == 1, res.err
        assert not os.path.exists(os.path.join(root, "mounts"))  # nothing made, not even the directory
    res = strata(root, "umount", image, check=False)
    assert res.code == 1 and res.err.strip() == f"Error: {image}: not a mounted image or image mount"


def test_a_mount_that_cannot_be_recorded_is_taken_down(root, image, tmp_path):
    """No mount is left that ``strata mount`` and ``umount`` could not find again."""
    short = json.loads(strata(root, "inspect", image).out)[0]["Id"][7:19]
    records, point = os.path.join(root, "mounts"), tmp_path / "here"
    os.makedirs(records)
    point.mkdir()
    subprocess.run(["chattr", "+i", records], check=True)  # nothing can be written there, even by root
    try:
        res = strata(root, "mount", image, str(point), check=False)
    finally:
        subprocess.run(["chattr", "-i", records], check=True)
    assert res.code == 1 and res.err.startswith(f"Error: cannot record the mount of {short}:"), res.err
    assert not is_mounted(str(point)) and os.listdir(records) == []
    assert strata(root, "mount").out.splitlines()[1:] == []


def test_a_busy_mount_stays_mounted_and_recorded(root, image):
    """umount of a mount in use (a process's cwd inside): one line, the mount and its record stay."""
    point = strata(root, "mount", image).out.strip()
    user = subprocess.Popen(["sleep", "600"], cwd=os.path.join(point, "d"))
    try:
        res = strata(root, "umount", image, check=False)
        assert res.code == 1 and res.err.strip() == f"Error: cannot unmount {point}: Device or resource busy"
        assert is_mounted(point) and strata(root, "mount").out.splitlines()[1].split()[-1] == point
    finally:
        user.kill()
        user.wait()
    strata(root, "umount", image)
    assert not is_mounted(point)


@pytest.mark.skipif(os.geteuid() != 0, reason="containers as root here (rootless: tests/test_rootless.py)")
def test_a_stopped_containers_files_mount_for_inspection(rootdir):
    """``strata mount CONTAINER``: its writable layer over its image, read-only; start and rm wait
    for its umount (rm -f unmounts); a running container's mount is its live union."""
    strata(rootdir, "run", "--name", "box", "bb", "sh", "-c", "echo made > /tmp/x; rm /bin/ls")
    where = strata(rootdir, "mount", "box").out.strip()
    try:
        with open(os.path.join(where, "tmp", "x")) as f:
            assert f.read() == "made\n"
        assert not os.path.lexists(os.path.join(where, "bin", "ls")) and os.path.exists(
            os.path.join(where, "bin", "sh")
        )
        with pytest.raises(OSError) as e:
            open(os.path.join(where, "new"), "w")
        assert e.value.errno == errno.EROFS
        assert "box" in strata(rootdir, "mount").out.splitlines()[1].split()
        for verb in ("start", "rm"):
            res = strata(rootdir, verb, "box", check=False)
            assert res.code != 0 and f"is mounted at {where}" in res.err, res.err
        strata(rootdir, "umount", "box")
        assert not is_mounted(where)
        strata(rootdir, "mount", "box")
        strata(rootdir, "rm", "-f", "box")  # unmounts, then removes
        assert not is_mounted(where)
    finally:
        if is_mounted(where):
            subprocess.run(["umount", "-l", where], check=False)
    strata(rootdir, "run", "-d", "--name", "live", "bb", "sleep", "1000")
    live = strata(rootdir, "mount", "live").out.strip()
    assert live == json.loads(strata(rootdir, "inspect", "live").out)[0]["GraphDriver"]["Data"]["MergedDir"]
    strata(rootdir, "rm", "-f", "live")
