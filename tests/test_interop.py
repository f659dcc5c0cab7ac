"""Interop with real tools: skopeo and umoci read what we save; we load what skopeo writes."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess

import pytest
from helpers import strata


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is required (make test installs it)")
    return path


def _run(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _same_tree(a: str, b: str) -> None:
    """Names, types, modes, sizes, link targets and contents match (dir mtimes aside)."""
    for dirpath, dirs, files in os.walk(a):
        rel = os.path.relpath(dirpath, a)
        other = os.path.join(b, rel)
        assert sorted(dirs + files) == sorted(os.listdir(other)), rel
        for name in dirs + files:
            pa, pb = os.path.join(dirpath, name), os.path.join(other, name)
            sa, sb = os.lstat(pa), os.lstat(pb)
            assert (sa.st_mode, sa.st_size) == (sb.st_mode, sb.st_size), os.path.join(rel, name)
            if os.path.islink(pa):
                assert os.readlink(pa) == os.readlink(pb)
            elif os.path.isfile(pa):
                assert filecmp.cmp(pa, pb, shallow=False), os.path.join(rel, name)


def test_skopeo_and_umoci_read_our_save(root, tmp_path, busybox_rootfs):
    _tool("skopeo"), _tool("umoci")
    strata(root, "import", busybox_rootfs, "bb:1", "--change", 'CMD ["/bin/sh"]')
    saved = tmp_path / "bb.tar"
    strata(root, "save", "-o", str(saved), "bb:1")
    _run("skopeo", "copy", "-q", f"docker-archive:{saved}", f"oci:{tmp_path}/layout:bb")
    _run("umoci", "unpack", "--image", f"{tmp_path}/layout:bb", str(tmp_path / "bundle"))
    _same_tree(busybox_rootfs, str(tmp_path / "bundle" / "rootfs"))
    # skopeo also reads it as an OCI layout directly (Docker 25's dual layout)
    _run("skopeo", "inspect", "--raw", f"docker-archive:{saved}")


def test_we_load_what_skopeo_writes_to_the_same_image_id(root, tmp_path, busybox_rootfs):
    _tool("skopeo")
    strata(root, "import", busybox_rootfs, "bb:1")
    image_id = json.loads(strata(root, "inspect", "bb:1").out)[0]["Id"]
    saved = tmp_path / "bb.tar"
    strata(root, "save", "-o", str(saved), "bb:1")
    da, oa = tmp_path / "da.tar", tmp_path / "oa.tar"
    _run("skopeo", "copy", "-q", f"docker-archive:{saved}", f"docker-archive:{da}:skopeo/da:1")
    _run("skopeo", "copy", "-q", f"docker-archive:{saved}", f"oci-archive:{oa}:skopeo/oa:1")
    oci_config = json.loads(_run("skopeo", "inspect", "--raw", f"oci-archive:{oa}"))["config"]["digest"]

    other = str(tmp_path / "other")
    assert strata(other, "load", "-i", str(da)).out.strip() == "Loaded image: skopeo/da:1"
    assert json.loads(strata(other, "inspect", "skopeo/da:1").out)[0]["Id"] == image_id
    assert strata(other, "load", "-i", str(oa)).out.strip() == "Loaded image: skopeo/oa:1"
    assert json.loads(strata(other, "inspect", "skopeo/oa:1").out)[0]["Id"] == oci_config
    # both images share the one layer
    assert len(os.listdir(os.path.join(other, "layers"))) == 1
    strata(other, "system", "check")
