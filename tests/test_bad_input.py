"""Every class of bad input is rejected with one line naming the file, a non-zero exit, nothing
written outside the store and the store left byte-for-byte as it was."""

from __future__ import annotations

import gzip
import json
import os

import pytest
from helpers import archive, config_for, docker_v12_save, sha256, snapshot, strata, tar_bytes

GOOD = {"name": "ok", "data": b"fine\n"}


def _crafted(kind: str, outside: str) -> bytes:
    if kind == "dotdot":
        return tar_bytes([GOOD, {"name": "../escaped", "data": b"x"}])
    if kind == "dotdot-inner":
        return tar_bytes([GOOD, {"name": "a/../../escaped", "data": b"x"}])
    if kind == "absolute":
        return tar_bytes([GOOD, {"name": outside + "/escaped", "data": b"x"}])
    if kind == "symlink-escape":
        return tar_bytes([{"name": "link", "type": "symlink", "link": outside}, {"name": "link/escaped", "data": b"x"}])
    if kind == "symlink-escape-relative":
        return tar_bytes(
            [
                {"name": "up", "type": "symlink", "link": "../../../../../../../../.." + outside},
                {"name": "up/escaped", "data": b"x"},
            ]
        )
    if kind == "hardlink-outside":
        return tar_bytes([GOOD, {"name": "h", "type": "hardlink", "link": "../../../../etc/passwd"}])
    if kind == "hardlink-absolute":
        return tar_bytes([GOOD, {"name": "h", "type": "hardlink", "link": "/etc/passwd"}])
    if kind == "hardlink-via-symlink":
        return tar_bytes(
            [{"name": "s", "type": "symlink", "link": outside}, {"name": "h", "type": "hardlink", "link": "s/target"}]
        )
    if kind == "whiteout-dot":
        return tar_bytes([GOOD, {"name": "d/.wh..", "data": b""}])
    if kind == "whiteout-dotdot":
        return tar_bytes([GOOD, {"name": "d/.wh...", "data": b""}])
    good = tar_bytes([GOOD, {"name": "second", "data": b"y" * 3000}, {"name": "third", "data": b"z"}])
    if kind == "corrupt-header":
        raw = bytearray(good)
        second = raw.index(b"second")  # the second member's header: damage its mode field
        raw[second + 100 : second + 104] = b"9999"
        return bytes(raw)
    if kind == "truncated":
        return good[: good.index(b"y" * 100) + 1000]
    if kind == "no-end-marker":
        end = len(good.rstrip(b"\0"))  # the last content block, without the two zero blocks
        return good[: end + (-end % 512)]
    raise AssertionError(kind)


TAR_CASES = [
    "dotdot",
    "dotdot-inner",
    "absolute",
    "symlink-escape",
    "symlink-escape-relative",
    "hardlink-outside",
    "hardlink-absolute",
    "hardlink-via-symlink",
    "whiteout-dot",
    "whiteout-dotdot",
    "corrupt-header",
    "truncated",
    "no-end-marker",
]


@pytest.fixture
def populated(root, busybox_rootfs):
    strata(root, "import", busybox_rootfs, "base:1")
    return root


def _assert_rejected(root: str, res, path: str, before: dict) -> None:
    assert res.code != 0
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, res.err
    assert os.path.basename(path) in lines[0] or path in lines[0], lines[0]
    assert snapshot(root) == before


@pytest.mark.parametrize("kind", TAR_CASES)
def test_import_rejects_crafted_tar(populated, tmp_path, kind):
    outside = str(tmp_path / "outside")
    os.mkdir(outside)
    path = tmp_path / f"{kind}.tar"
    path.write_bytes(_crafted(kind, outside))
    before = snapshot(populated)
    res = strata(populated, "import", str(path), "evil:1", check=False)
    _assert_rejected(populated, res, str(path), before)
    assert os.listdir(outside) == []
    assert not (tmp_path / "escaped").exists()


@pytest.mark.parametrize("kind", TAR_CASES)
def test_load_rejects_archive_with_crafted_layer(populated, tmp_path, kind):
    outside = str(tmp_path / "outside")
    os.mkdir(outside)
    path = tmp_path / f"{kind}-save.tar"
    path.write_bytes(docker_v12_save([_crafted(kind, outside)], ["evil:1"]))
    before = snapshot(populated)
    res = strata(populated, "load", "-i", str(path), check=False)
    _assert_rejected(populated, res, str(path), before)
    assert os.listdir(outside) == []


def _v12_with(small_layer: bytes, mutate) -> bytes:
    files = {}
    diff = sha256(small_layer)
    config = config_for([diff])
    cfg = sha256(config).split(":")[1] + ".json"
    files[cfg] = config
    files["abc/layer.tar"] = small_layer
    files["manifest.json"] = json.dumps([{"Config": cfg, "RepoTags": ["x:1"], "Layers": ["abc/layer.tar"]}]).encode()
    mutate(files, cfg)
    return archive(files)


ARCHIVE_CASES = {
    "layer-digest-mismatch": lambda f, c: f.__setitem__("abc/layer.tar", tar_bytes([{"name": "other", "data": b"x"}])),
    "missing-layer": lambda f, c: f.pop("abc/layer.tar"),
    "missing-config": lambda f, c: f.pop(c),
    "malformed-manifest": lambda f, c: f.__setitem__("manifest.json", b"[{not json"),
    "malformed-config": lambda f, c: (f.pop(c), f.__setitem__(c, b"{oops")),
    "config-digest-mismatch": lambda f, c: f.__setitem__(c, f[c].replace(b"amd64", b"arm64")),
    "layer-count-lies": lambda f, c: f.__setitem__(
        "manifest.json",
        json.dumps([{"Config": c, "RepoTags": ["x:1"], "Layers": ["abc/layer.tar", "abc/layer.tar"]}]).encode(),
    ),
    "bad-tag": lambda f, c: f.__setitem__(
        "manifest.json", json.dumps([{"Config": c, "RepoTags": ["UPPER:1"], "Layers": ["abc/layer.tar"]}]).encode()
    ),
    "not-an-archive": lambda f, c: [f.pop(k) for k in list(f)],
}


@pytest.mark.parametrize("case", sorted(ARCHIVE_CASES))
def test_load_rejects_bad_archive(populated, tmp_path, small_layer, case):
    path = tmp_path / f"{case}.tar"
    data = _v12_with(small_layer, ARCHIVE_CASES[case])
    path.write_bytes(data)
    before = snapshot(populated)
    res = strata(populated, "load", "-i", str(path), check=False)
    _assert_rejected(populated, res, str(path), before)


@pytest.mark.parametrize("kind", ["docker", "oci"])
def test_a_bad_copy_of_a_layer_the_store_has_is_rejected_too(populated, tmp_path, small_layer, kind):
    """The store has the layer already (a good archive loaded it): an archive whose copy of it is
    damaged, or another layer under its digest, is refused all the same, store unchanged."""
    good = tmp_path / "good.tar"
    good.write_bytes(_v12_with(small_layer, lambda f, c: None))
    strata(populated, "load", "-i", str(good))
    if kind == "docker":
        path = str(tmp_path / "bad.tar")
        with open(path, "wb") as f:
            f.write(_v12_with(small_layer, ARCHIVE_CASES["layer-digest-mismatch"]))
    else:
        path = _oci_layout(tmp_path, small_layer, blob_damage=True)
    before = snapshot(populated)
    res = strata(populated, "load", "-i", path, check=False)
    _assert_rejected(populated, res, path, before)
    assert "hashes to" in res.err or "corrupt compressed data" in res.err, res.err


def _oci_layout(tmp_path, small_layer: bytes, size_delta: int = 0, blob_damage: bool = False) -> str:
    lay = tmp_path / "layout"
    blobs = lay / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    gz = gzip.compress(small_layer, mtime=0)
    config = config_for([sha256(small_layer)])
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha256(gz),
                    "size": len(gz) + size_delta,
                }
            ],
        }
    ).encode()
    for blob in (gz, config, manifest):
        (blobs / sha256(blob).split(":")[1]).write_bytes(blob)
    if blob_damage:
        (blobs / sha256(gz).split(":")[1]).write_bytes(gz[:-8] + b"\0" * 8)
    (lay / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (lay / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": sha256(manifest),
                        "size": len(manifest),
                        "annotations": {"org.opencontainers.image.ref.name": "oci/test:1"},
                    }
                ],
            }
        )
    )
    return str(lay)


def test_load_rejects_descriptor_size_that_lies(populated, tmp_path, small_layer):
    lay = _oci_layout(tmp_path, small_layer, size_delta=5)
    before = snapshot(populated)
    _assert_rejected(populated, strata(populated, "load", "-i", lay, check=False), lay, before)


def test_load_rejects_damaged_compressed_blob(populated, tmp_path, small_layer):
    lay = _oci_layout(tmp_path, small_layer, blob_damage=True)
    before = snapshot(populated)
    _assert_rejected(populated, strata(populated, "load", "-i", lay, check=False), lay, before)


def test_oci_layout_loads_when_sound(populated, tmp_path, small_layer):
    lay = _oci_layout(tmp_path, small_layer)
    res = strata(populated, "load", "-i", lay)
    assert res.out.strip() == "Loaded image: oci/test:1"


def test_bad_reference_changes_nothing(populated, busybox_rootfs):
    before = snapshot(populated)
    res = strata(populated, "import", busybox_rootfs, "Not/Valid:tag", check=False)
    assert res.code != 0 and len(res.err.strip().splitlines()) == 1
    assert snapshot(populated) == before


def test_save_of_unknown_image_writes_no_file(populated, tmp_path):
    out = tmp_path / "out.tar"
    res = strata(populated, "save", "-o", str(out), "nosuch:1", check=False)
    assert res.code != 0 and "No such image" in res.err
    assert not out.exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".out.tar")] == []
