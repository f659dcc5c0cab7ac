"""A power cut after copy-ups leaves no upper file that lost its data and hides the lower one.

The upper lives on an ext4 of its own, on a loop device, mounted with ``commit=60`` so that only an
fsync commits its journal within the test. The power cut is a copy of the loop's backing file, taken
after an fsync of an unrelated file committed the journal (the copy-ups' renames with it), before the
kernel wrote the copies' data back: what the disk holds at that moment. The copy is then mounted as the
host would after a reboot, and the union mounted on it again.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from unionfs_support import is_mounted, make_layer, mounted

from unionfs import journal

FILES = 12
SIZE = 16 << 10


@contextmanager
def ext4(image, mountpoint) -> Iterator[None]:
    """``image`` (made if missing) mounted at ``mountpoint`` through a loop device, journal commits
    left to fsync; unmounted (and the loop device freed) afterwards."""
    if not image.exists():
        with open(image, "wb") as f:
            f.truncate(64 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mountpoint.mkdir(exist_ok=True)
    subprocess.run(["mount", "-o", "loop,commit=60", str(image), str(mountpoint)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)
        assert not is_mounted(str(mountpoint))


def _commit_journal(disk) -> None:
    """Commit ext4's running transaction (as its timer would) without writing other files' data."""
    fd = os.open(disk / "unrelated", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"x")
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_up_then_cut_power(tmp_path, lower, extra: str):
    """Copy every lower file up (chmod), rename one, unlink one, append to one and fsync it; then
    cut the power. Returns the image the disk holds after the cut."""
    disk, point = tmp_path / "disk", tmp_path / "mnt"
    point.mkdir()
    with ext4(tmp_path / "disk.img", disk):
        for d in ("upper", "work"):
            (disk / d).mkdir()
        with mounted(str(point), [lower], str(disk / "upper"), str(disk / "work"), extra=extra):
            for i in range(FILES):
                os.chmod(point / f"f{i}", 0o600)
            os.rename(point / "f1", point / "moved")
            os.unlink(point / "f2")
            with open(point / "f3", "ab") as f:
                f.write(b"appended")
                f.flush()
                os.fsync(f.fileno())
            _commit_journal(disk)
            cut = tmp_path / "after-the-cut.img"
            shutil.copyfile(tmp_path / "disk.img", cut)
    return cut


@pytest.fixture
def lower(tmp_path):
    return make_layer(str(tmp_path / "lower"), {f"f{i}": os.urandom(SIZE).hex() for i in range(FILES)})


def test_without_notes_a_power_cut_loses_copied_data(tmp_path, lower):
    """The hazard is real on this set-up: under ``volatile`` (no notes, no fsync) the cut leaves upper
    files shorter than their lower, which would hide it."""
    cut = _copy_up_then_cut_power(tmp_path, lower, ",volatile")
    with ext4(cut, tmp_path / "after"):
        sizes = [os.lstat(tmp_path / "after" / "upper" / f"f{i}").st_size for i in (0, 4, 5)]
    assert min(sizes) < 2 * SIZE, sizes  # make_layer wrote hex: 2 * SIZE bytes


def test_the_next_mount_gives_noted_copies_their_data_back(tmp_path, lower):
    cut = _copy_up_then_cut_power(tmp_path, lower, "")
    after, point = tmp_path / "after", tmp_path / "mnt"
    with ext4(cut, after):
        upper, work = after / "upper", after / "work"
        lost = [name for name in os.listdir(upper) if os.lstat(upper / name).st_size < 2 * SIZE]
        assert lost, "the cut lost nothing: this test would not see the notes work"
        notes = set(os.listdir(work / journal.DIRNAME)) - {journal.UPPER}
        assert len(notes) == FILES - 2  # f2 was unlinked, f3 fsynced: their notes went
        with mounted(str(point), [lower], str(upper), str(work)):
            for i in range(FILES):
                name = {1: "moved", 2: None}.get(i, f"f{i}")
                if name is None:
                    assert not (point / f"f{i}").exists()
                    continue
                want = open(f"{lower}/f{i}", "rb").read() + (b"appended" if i == 3 else b"")
                assert (point / name).read_bytes() == want, name
                assert stat.S_IMODE(os.lstat(point / name).st_mode) == 0o600
            assert os.listdir(work / journal.DIRNAME) == [journal.UPPER]  # recovered, and on disk
