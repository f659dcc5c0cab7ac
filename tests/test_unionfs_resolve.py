"""Name resolution across layers (no FUSE): whiteouts, opaque dirs, merged listings."""

from __future__ import annotations

import os

import pytest

from unionfs import resolve

WHITEOUT = object()  # a .wh. file for this name
OVERLAY_WHITEOUT = object()  # a 0/0 char device (root only)
OPAQUE = object()  # this directory is opaque (.wh..wh..opq)


def make_layer(base, spec: dict) -> str:
    """Build a layer dir from ``{"etc/hostname": "a\\n", "old": WHITEOUT, "var/": OPAQUE, "d/": None}``."""
    os.makedirs(base)
    for name, value in spec.items():
        path = os.path.join(base, name.rstrip("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if value is WHITEOUT:
            open(os.path.join(os.path.dirname(path), ".wh." + os.path.basename(path)), "w").close()
        elif value is OVERLAY_WHITEOUT:
            os.mknod(path, 0o600 | 0o020000, os.makedev(0, 0))
        elif name.endswith("/"):
            os.makedirs(path, exist_ok=True)
            if value is OPAQUE:
                open(os.path.join(path, ".wh..wh..opq"), "w").close()
        else:
            with open(path, "w") as f:
                f.write(value)
    return str(base)


@pytest.fixture
def stack(tmp_path):
    stacks = iter(range(1000))

    def build(*specs: dict) -> list[str]:
        n = next(stacks)
        return [make_layer(tmp_path / f"s{n}" / f"l{i}", spec) for i, spec in enumerate(specs)]

    return build


def walk(layers: list[str], path: str) -> resolve.Found | None:
    node = resolve.root(layers)
    for part in [p for p in path.split("/") if p]:
        nxt = resolve.lookup(node, part)
        node.close()
        if nxt is None:
            return None
        node = nxt
    return node


def names(layers: list[str], path: str = "") -> dict[str, int]:
    node = walk(layers, path)
    assert node is not None
    try:
        return dict(resolve.listdir(node))
    finally:
        node.close()


def test_upper_file_hides_lower(stack):
    layers = stack({"etc/hostname": "upper"}, {"etc/hostname": "lower", "etc/passwd": "x"})
    found = walk(layers, "etc/hostname")
    assert found is not None and found.layer == 0
    assert names(layers, "etc") == {"hostname": 0, "passwd": 1}


def test_whiteout_hides_lower_name_but_not_its_own_layer(stack):
    layers = stack({"etc/": None, "etc/passwd": WHITEOUT}, {"etc/passwd": "x", "etc/group": "g"})
    assert walk(layers, "etc/passwd") is None
    assert names(layers, "etc") == {"group": 1}
    same = stack({"a": "kept", "a_": WHITEOUT}, {})  # .wh.a_ beside a: unrelated
    assert walk(same, "a") is not None


def test_whiteout_in_middle_layer_hides_only_below(stack):
    layers = stack({"f": "top"}, {"f": WHITEOUT}, {"f": "bottom"})
    found = walk(layers, "f")
    assert found is not None and found.layer == 0
    layers2 = stack({"g/": None}, {"f": WHITEOUT}, {"f": "bottom"})
    assert walk(layers2, "f") is None


def test_opaque_dir_hides_everything_below(stack):
    layers = stack({"var/": OPAQUE, "var/new": "n"}, {"var/old": "o", "var/sub/x": "x"})
    assert names(layers, "var") == {"new": 0}
    assert walk(layers, "var/old") is None


def test_dirs_merge_until_a_non_dir_below(stack):
    layers = stack({"d/a": "1"}, {"d/b": "2"}, {"d": "a file, hidden by the dirs above"})
    found = walk(layers, "d")
    assert found is not None and found.is_dir and [layer for layer, _ in found.dirs] == [0, 1]
    found.close()
    assert names(layers, "d") == {"a": 0, "b": 1}


def test_markers_never_listed_or_resolved(stack):
    layers = stack({"x/": OPAQUE, "gone": WHITEOUT}, {"gone": "g"})
    assert names(layers) == {"x": 0}
    assert names(layers, "x") == {}
    assert walk(layers, ".wh.gone") is None
    assert walk(layers, "x/.wh..wh..opq") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a 0/0 whiteout needs root")
def test_overlay_style_whiteouts_are_honoured(stack):
    layers = stack({"etc/": None, "etc/passwd": OVERLAY_WHITEOUT}, {"etc/passwd": "x", "etc/group": "g"})
    assert walk(layers, "etc/passwd") is None
    assert names(layers, "etc") == {"group": 1}


def test_overlay_opaque_xattr(stack, tmp_path):
    layers = stack({"v/new": "n"}, {"v/old": "o"})
    try:
        os.setxattr(os.path.join(layers[0], "v"), "user.overlay.opaque", b"y")
    except OSError as e:
        pytest.fail(f"user xattrs unsupported on {tmp_path}: {e}")
    assert names(layers, "v") == {"new": 0}


def test_name_too_long(stack):
    layers = stack({"a": "1"})
    node = resolve.root(layers)
    try:
        with pytest.raises(OSError) as info:
            resolve.lookup(node, "n" * 256)
        assert info.value.errno == 36  # ENAMETOOLONG
    finally:
        node.close()
