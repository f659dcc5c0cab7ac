"""Direct tests of the modules the Operations stand on, each alone: no handler, no mount."""

from __future__ import annotations

import errno
import json
import os
import stat
from types import SimpleNamespace

import pytest
from unionfs_support import WHITEOUT, make_layer, python_child

from unionfs import attrs
from unionfs.copyup import Copier, CopyUps
from unionfs.fdcache import FdCache
from unionfs.inodes import ROOT, InodeTable
from unionfs.layers import LayerSet
from unionfs.listing import Listings
from unionfs.rename import RENAME_EXCHANGE, RENAME_NOREPLACE, Renames
from unionfs.upper import Upper, without_suidgid


@pytest.fixture
def layers(tmp_path):
    lower = make_layer(str(tmp_path / "l"), {"d/": None, "d/f": "lower", "d/g": "g", "gone": "x"})
    upper = make_layer(str(tmp_path / "u"), {"d/": None, "d/new": "n", "gone": WHITEOUT})
    ls = LayerSet(upper, [lower])
    yield ls
    ls.close()


def _child(inodes, parent, name):
    res = inodes.layers.resolve(parent.dir_layers, parent.rel, name)
    assert res is not None
    return inodes.remember(parent, name, res)


def _cap_sys_admin() -> bool:
    with open("/proc/self/status") as f:
        caps = next(line for line in f if line.startswith("CapEff:")).split()[1]
    return bool(int(caps, 16) & (1 << 21))


@pytest.mark.skipif(not _cap_sys_admin(), reason="a private mount needs CAP_SYS_ADMIN over the mount namespace")
def test_a_lower_layer_is_reached_through_a_read_only_noatime_mount_of_its_own(layers):
    """As kernel overlayfs clones its layers' mounts: nothing done through the union can write a
    layer or move an atime in it (layers are shared by every container of their images)."""
    lower = layers.fds[1]
    try:
        os.close(os.open("d/f", os.O_WRONLY, dir_fd=lower))
        pytest.fail("a lower file opened for writing")
    except OSError as e:
        assert e.errno == errno.EROFS
    assert os.statvfs(f"/proc/self/fd/{lower}").f_flag & (os.ST_RDONLY | os.ST_NOATIME) == os.ST_RDONLY | os.ST_NOATIME
    upper = layers.fds[0]
    assert not os.statvfs(f"/proc/self/fd/{upper}").f_flag & os.ST_RDONLY  # the upper's as it is
    assert layers.roots[1] == os.path.realpath(layers.paths[1])  # where records and notes say it is


# In a user namespace's own mount namespace (podman's rootless mount programs run so) the mounts it
# was given keep their atime mode: the lower's clone is read-only alone, its files opened O_NOATIME.
_USERNS_CHILD = """\
import json, os, sys
from unionfs.copydata import open_lower
from unionfs.layers import LayerSet
ls = LayerSet(None, [sys.argv[1]])
flags = os.statvfs(f"/proc/self/fd/{ls.fds[0]}").f_flag
fd = open_lower("f", ls.fds[0])
data = os.read(fd, 100).decode()
os.close(fd)
ls.close()
print(json.dumps([bool(flags & os.ST_RDONLY), bool(flags & os.ST_NOATIME), data]))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="unshare -U as root maps root: the files are its own")
def test_in_a_user_namespace_a_lower_is_read_only_and_read_without_moving_its_atime(tmp_path):
    lower = make_layer(str(tmp_path / "l"), {"f": "lower"})
    os.utime(os.path.join(lower, "f"), ns=(1_000_000_000, 2_000_000_000))
    done = python_child(_USERNS_CHILD, lower, prefix=("unshare", "-Urm"))
    assert done.returncode == 0, done.stderr
    host_noatime = bool(os.statvfs(lower).f_flag & os.ST_NOATIME)
    assert json.loads(done.stdout) == [True, host_noatime, "lower"]  # read-only; the atime mode is locked
    assert os.stat(os.path.join(lower, "f")).st_atime_ns == 1_000_000_000


def test_inodes_are_ours_stable_and_forgotten_at_zero(layers):
    inodes = InodeTable(layers, lambda node: None)
    assert inodes.root.ino == ROOT and inodes.root.dir_layers == [0, 1]
    d = _child(inodes, inodes.root, "d")
    f = _child(inodes, d, "f")
    assert f.rel == "d/f" and f.layer == 1 and f.ino not in (ROOT, d.ino)
    assert _child(inodes, d, "f") is f  # found again: the same node
    f.lookups = 2
    assert inodes.forget(f.ino, 1) is None and f.ino in inodes.nodes
    assert inodes.forget(f.ino, 1) is f and f.ino not in inodes.nodes
    assert inodes.forget(ROOT, 1) is None  # the root is never forgotten
    with pytest.raises(OSError) as e:
        inodes.node(f.ino)
    assert e.value.errno == 116  # ESTALE


def test_an_alias_keeps_the_originals_number(layers):
    inodes = InodeTable(layers, lambda node: None)
    lower = os.lstat(os.path.join(layers.paths[1], "d/g"))
    upper = os.lstat(os.path.join(layers.paths[0], "d/new"))
    number = inodes.ino(lower)
    inodes.alias((upper.st_dev, upper.st_ino), lower)
    assert inodes.ino(upper) == number


def test_fd_cache_keeps_the_most_recent_and_pins_outside_the_cap(layers):
    fds = FdCache(layers, cap=2)
    inodes = InodeTable(layers, fds.relinked)
    d = _child(inodes, inodes.root, "d")
    nodes = [_child(inodes, d, n) for n in ("f", "g", "new")]
    opened = [fds.fd(n) for n in nodes]
    assert nodes[0].fd == -1 and list(fds.lru) == [nodes[1].ino, nodes[2].ino]  # the oldest closed
    assert os.pread(opened[2], 1, 0) == b"n"
    fds.pin(nodes[2])
    assert nodes[2].fd_writable and nodes[2].ino not in fds.lru
    fds.relinked(nodes[2])
    assert nodes[2].ino in fds.lru
    for n in nodes:
        fds.drop(n)
    assert not fds.lru and all(n.fd == -1 for n in nodes)


def test_listing_of_a_lower_only_dir_is_resolved_once(tmp_path):
    lower = make_layer(str(tmp_path / "l"), {"d/": None, "d/a": "a", "d/b": "b"})
    ls = LayerSet(None, [lower])
    try:
        inodes = InodeTable(ls, lambda node: None)
        listings = Listings(ls, inodes)
        d = _child(inodes, inodes.root, "d")
        fh = listings.open(d)
        listings.take(listings.handles[fh])
        entries = listings.handles[fh].entries
        assert [e[0] for e in entries[:2]] == [".", ".."] and all(e[3] is not None for e in entries)
        assert sorted(e[0] for e in entries[2:]) == ["a", "b"]
        listings.take(listings.handles[fh])
        assert listings.handles[fh].entries is entries is d.listing  # kept on the node
        listings.release(fh)
        assert fh not in listings.handles
    finally:
        ls.close()


def test_upper_markers_and_owners(layers):
    inodes = InodeTable(layers, lambda node: None)
    up = Upper(layers)
    d = _child(inodes, inodes.root, "d")
    assert up.lower_has(d, "f") and not up.lower_has(d, "new")
    up.make_whiteout(d, "f")
    assert os.path.exists(os.path.join(layers.paths[0], "d/.wh.f")) and not d.no_whiteouts
    assert up.drop_whiteout(d, "f") and not up.drop_whiteout(d, "f")
    d.no_whiteouts = True
    up.make_whiteout(d, "g")
    assert not d.no_whiteouts
    parent = SimpleNamespace(st_mode=stat.S_IFDIR | 0o2775, st_gid=4321)
    assert Upper.new_gid(parent, 100) == (4321, True)
    assert Upper.new_gid(SimpleNamespace(st_mode=stat.S_IFDIR | 0o755, st_gid=4321), 100) == (100, False)
    up.clear_markers("d")
    assert os.listdir(os.path.join(layers.paths[0], "d")) == []


def test_without_suidgid_drops_what_the_kernel_drops():
    assert without_suidgid(stat.S_IFREG | 0o6755) == 0o0755
    assert without_suidgid(stat.S_IFREG | 0o6745) == 0o2745  # setgid stays without group-execute
    assert without_suidgid(stat.S_IFREG | 0o0755) is None
    assert without_suidgid(stat.S_IFDIR | 0o4755) is None


def test_attrs_say_what_the_kernel_may_keep():
    st = os.lstat("/")
    a = attrs.attr(st, 7)
    assert a.st_ino == 7 and a.st_mode == st.st_mode and a.entry_timeout == attrs.TIMEOUT
    assert attrs.attr(st, 7, unlinked=True).st_nlink == 0
    assert attrs.negative().st_ino == 0
    new = SimpleNamespace(st_atime_ns=1, st_mtime_ns=2)
    both = SimpleNamespace(update_atime=True, update_mtime=True)
    assert attrs.new_times(new, both, lambda: pytest.fail("no stat needed")) == (1, 2)
    one = SimpleNamespace(update_atime=False, update_mtime=True)
    assert attrs.new_times(new, one, lambda: st) == (st.st_atime_ns, 2)


async def test_copy_ups_go_parents_first_and_keep_the_number(layers, tmp_path):
    work = make_layer(str(tmp_path / "w"), {})
    fds = FdCache(layers)
    inodes = InodeTable(layers, fds.relinked)
    copier = Copier(layers, work)
    try:
        copyups = CopyUps(copier, inodes, fds)
        d = _child(inodes, inodes.root, "d")
        f = _child(inodes, d, "f")
        number = f.ino
        await copyups.copy_up(f)
        assert f.layer == 0 and f.fd >= 0 and f.fd_writable
        assert os.path.exists(os.path.join(layers.paths[0], "d/f"))
        assert _child(inodes, d, "f").ino == number  # the copy is an alias of the lower file
        await copyups.copy_up(f)  # already up: nothing to do
        fds.drop(f)
    finally:
        copier.close()


@pytest.fixture
def renames(layers, tmp_path):
    """A ``Renames`` over the ``layers`` union, with copy-ups into a fresh workdir."""
    fds = FdCache(layers)
    inodes = InodeTable(layers, fds.relinked)
    copier = Copier(layers, make_layer(str(tmp_path / "w"), {}))
    copyups = CopyUps(copier, inodes, fds)
    yield Renames(layers, inodes, fds, Upper(layers), copier.journal, copyups.copy_up, copyups.upper_dir)
    for node in list(inodes.nodes.values()):
        fds.drop(node)
    copier.close()


def _upper(layers, rel):
    path = os.path.join(layers.paths[0], rel)
    if not os.path.lexists(path):
        return None
    with open(path) as f:
        return f.read()


async def test_rename_of_a_lower_file_copies_it_up_and_whites_out_its_old_name(renames, layers):
    inodes = renames.inodes
    d = _child(inodes, inodes.root, "d")
    f = _child(inodes, d, "f")
    number = f.ino
    await renames.rename(d, "f", inodes.root, "moved")
    assert _upper(layers, "moved") == "lower" and _upper(layers, "d/.wh.f") == ""
    assert layers.resolve(d.dir_layers, d.rel, "f") is None
    assert (f.parent, f.name, f.layer) == (inodes.root, "moved", 0)
    assert _child(inodes, inodes.root, "moved").ino == number  # the copy keeps the lower file's number


async def test_rename_over_an_upper_file_unlinks_its_node_and_noreplace_refuses(renames, layers):
    inodes = renames.inodes
    d = _child(inodes, inodes.root, "d")
    new = _child(inodes, d, "new")
    for name in ("g", "new"):  # a lower name and an upper one: both refused, nothing changes
        with pytest.raises(OSError) as e:
            await renames.rename(d, "f", d, name, RENAME_NOREPLACE)
        assert e.value.errno == 17  # EEXIST
    assert _upper(layers, "d/f") is None and _upper(layers, "d/new") == "n"
    await renames.rename(d, "f", d, "new")
    assert _upper(layers, "d/new") == "lower" and new.unlinked
    assert new.fd >= 0 and os.pread(new.fd, 1, 0) == b"n"  # pinned first: a holder still reads it


async def test_exchange_copies_both_up_and_swaps_them(renames, layers):
    inodes = renames.inodes
    d = _child(inodes, inodes.root, "d")
    f, new = _child(inodes, d, "f"), _child(inodes, d, "new")
    await renames.rename(d, "f", d, "new", RENAME_EXCHANGE)
    assert _upper(layers, "d/f") == "n" and _upper(layers, "d/new") == "lower"
    assert (f.name, new.name) == ("new", "f") and f.layer == 0
    for target, err in (("missing", 2), ("", 18)):  # ENOENT; EXDEV: the root has lower parts
        with pytest.raises(OSError) as e:
            await renames.rename(d, "f", inodes.root, target or "d", RENAME_EXCHANGE)
        assert e.value.errno == err


async def test_rename_on_a_read_only_union_answers_erofs_after_the_names(layers):
    inodes = InodeTable(layers, lambda node: None)

    async def no_copy(node):
        pytest.fail("a read-only union copies nothing up")

    renames = Renames(layers, inodes, FdCache(layers), None, None, no_copy, lambda node: None)
    d = _child(inodes, inodes.root, "d")
    # the names are checked first (ENOENT, EEXIST), as on any union; then EROFS
    for name, flags, err in (("nope", 0, 2), ("f", RENAME_NOREPLACE, 17), ("f", 0, 30), ("f", RENAME_EXCHANGE, 30)):
        with pytest.raises(OSError) as e:
            await renames.rename(d, name, d, "g", flags)
        assert e.value.errno == err, (name, flags)
