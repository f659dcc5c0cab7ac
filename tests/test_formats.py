"""Every docker save generation, skopeo's and OCI archives load to the right images, tags and chains."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import tarfile

import pytest
import zstandard
from helpers import config_for, docker_v12_save, legacy_save, sha256, strata, tar_bytes


def _layer(name: str, data: bytes) -> bytes:
    return tar_bytes([{"name": name, "data": data}])


def _ids(root: str) -> list[str]:
    return strata(root, "images", "-a", "-q").out.split()


def test_legacy_save_loads_tags_and_parent_chain(root, tmp_path):
    base, mid, top = (hashlib.sha256(n.encode()).hexdigest() for n in ("base", "mid", "top"))
    data = legacy_save(
        [(base, _layer("a", b"1"), "ADD a"), (mid, _layer("b", b"22"), "ADD b"), (top, _layer("c", b"333"), "ADD c")],
        {"old": {"latest": top, "base": base}},
    )
    path = tmp_path / "legacy.tar"
    path.write_bytes(data)
    res = strata(root, "load", "-i", str(path))
    assert sorted(res.out.split("\n")[:-1]) == ["Loaded image: old:base", "Loaded image: old:latest"]
    latest = json.loads(strata(root, "inspect", "old:latest").out)[0]
    assert len(latest["RootFS"]["Layers"]) == 3
    assert [h["created_by"] for h in latest["History"]] == ["/bin/sh -c ADD a", "/bin/sh -c ADD b", "/bin/sh -c ADD c"]
    middle = json.loads(strata(root, "inspect", latest["Parent"]).out)[0]
    assert len(middle["RootFS"]["Layers"]) == 2 and middle["RepoTags"] == []
    bottom = json.loads(strata(root, "inspect", middle["Parent"]).out)[0]
    assert bottom["RepoTags"] == ["old:base"] and bottom["Parent"] == ""
    # the tree shows one chain, the tags where they end
    tree = strata(root, "images", "--tree").out.splitlines()
    assert len(tree) == 3 and "Tags: old:base" in tree[0] and "Tags: old:latest" in tree[2]
    assert tree[1].startswith("  └─") and tree[2].startswith("    └─")
    # history names the local parent images instead of <missing>
    hist = strata(root, "history", "old:latest").out.splitlines()
    assert [line.split()[0] for line in hist[1:]] == [latest["Id"][7:19], middle["Id"][7:19], bottom["Id"][7:19]]


def test_docker_v12_save_loads(root, tmp_path):
    layers = [_layer("a", b"1"), _layer("b", b"2")]
    path = tmp_path / "v12.tar"
    path.write_bytes(docker_v12_save(layers, ["app:1.0", "app:latest"]))
    res = strata(root, "load", "-i", str(path))
    assert res.out.splitlines() == ["Loaded image: app:1.0", "Loaded image: app:latest"]
    doc = json.loads(strata(root, "inspect", "app:1.0").out)[0]
    assert doc["RootFS"]["Layers"] == [sha256(x) for x in layers]
    assert doc["Id"] == sha256(config_for([sha256(x) for x in layers]))


def test_layers_are_shared_and_never_extracted_twice(root, tmp_path):
    base = _layer("base", b"B" * 1000)
    one, two = tmp_path / "one.tar", tmp_path / "two.tar"
    one.write_bytes(docker_v12_save([base, _layer("x", b"1")], ["one:1"]))
    two.write_bytes(docker_v12_save([base, _layer("y", b"2")], ["two:1"]))
    strata(root, "load", "-i", str(one))
    base_dir = os.path.join(root, "layers", sha256(base).split(":")[1])
    inode = os.stat(os.path.join(base_dir, "diff", "base")).st_ino
    strata(root, "load", "-i", str(two))
    strata(root, "load", "-i", str(one))  # again: nothing new
    assert os.stat(os.path.join(base_dir, "diff", "base")).st_ino == inode
    assert len(os.listdir(os.path.join(root, "layers"))) == 3
    tree = strata(root, "images", "--tree").out.splitlines()
    assert len(tree) == 3 and tree[0].startswith("└─") and tree[1].startswith("  ├─") and tree[2].startswith("  └─")
    with open(os.path.join(root, "layers", os.listdir(os.path.join(root, "layers"))[0], "parent")) as f:
        assert f.read() in ("", sha256(base) + "\n")


@pytest.mark.parametrize("compress", ["gzip", "zstd", "none"])
def test_oci_archive_with_compressed_layers(root, tmp_path, compress):
    layer = _layer("file", b"content" * 100)
    blob = {
        "gzip": lambda b: gzip.compress(b, mtime=0),
        "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
        "none": lambda b: b,
    }[compress](layer)
    media = "application/vnd.oci.image.layer.v1.tar" + {"gzip": "+gzip", "zstd": "+zstd", "none": ""}[compress]
    config = config_for([sha256(layer)])
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(config),
                "size": len(config),
            },
            "layers": [{"mediaType": media, "digest": sha256(blob), "size": len(blob)}],
        }
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": sha256(manifest),
                    "size": len(manifest),
                    "annotations": {"io.containerd.image.name": "docker.io/library/comp:" + compress},
                }
            ],
        }
    ).encode()
    entries = [{"name": "oci-layout", "data": b'{"imageLayoutVersion":"1.0.0"}'}, {"name": "index.json", "data": index}]
    entries += [{"name": "blobs/sha256/" + sha256(b).split(":")[1], "data": b} for b in (blob, config, manifest)]
    path = tmp_path / "oci.tar"
    path.write_bytes(tar_bytes(entries))
    assert strata(root, "load", "-i", str(path)).out.strip() == f"Loaded image: comp:{compress}"
    assert _ids(root) == [sha256(config)[7:19]]
    strata(root, "system", "check")


def test_compressed_archive_from_stdin(root, tmp_path):
    data = gzip.compress(docker_v12_save([_layer("a", b"1")], ["piped:1"]))
    assert strata(root, "load", input=data).out.strip() == "Loaded image: piped:1"


def test_save_is_reproducible_and_round_trips(root, tmp_path, busybox_rootfs):
    strata(root, "import", busybox_rootfs, "bb:1", "--change", 'CMD ["/bin/sh"]')
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    strata(root, "save", "-o", str(a), "bb:1")
    strata(root, "save", "-o", str(b), "bb")
    assert a.read_bytes() == b.read_bytes()
    with tarfile.open(a) as tar:
        names = tar.getnames()
        assert {"index.json", "manifest.json", "oci-layout", "repositories"} <= set(names)
        assert all(m.mtime == 0 for m in tar.getmembers())
        manifest = json.load(tar.extractfile("manifest.json"))
    assert manifest[0]["RepoTags"] == ["bb:1"]
    other = str(tmp_path / "other")
    assert strata(other, "load", "-i", str(a)).out.strip() == "Loaded image: bb:1"
    assert _ids(other) == _ids(root)
    c = tmp_path / "c.tar"
    strata(other, "save", "-o", str(c), "bb:1")
    assert c.read_bytes() == a.read_bytes()


def test_save_to_stdout(root, busybox_rootfs):
    strata(root, "import", busybox_rootfs, "bb:1")
    proc = subprocess.run(["tar", "-t"], input=strata_bytes(root, "save", "bb:1"), capture_output=True)
    assert b"manifest.json" in proc.stdout


def strata_bytes(root: str, *args: str) -> bytes:
    from helpers import REPO, STRATA

    return subprocess.run(
        [*STRATA, "--root", root, *args],
        capture_output=True,
        check=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
    ).stdout


def test_import_from_tar_and_stdin_give_the_same_layer(root, tmp_path):
    layer = tar_bytes([{"name": "bin/", "type": "dir"}, {"name": "bin/x", "data": b"x", "mode": 0o755}])
    path = tmp_path / "rootfs.tar.gz"
    path.write_bytes(gzip.compress(layer))
    strata(root, "import", str(path), "a:1")
    strata(root, "import", "-", "b:1", input=layer)
    a = json.loads(strata(root, "inspect", "a:1").out)[0]
    b = json.loads(strata(root, "inspect", "b:1").out)[0]
    assert a["RootFS"]["Layers"] == b["RootFS"]["Layers"] == [sha256(layer)]
    assert len(os.listdir(os.path.join(root, "layers"))) == 1


def test_gzip_is_checked_as_the_gzip_module_checks_it():
    """ISA-L inflates gzip layers: members one after another and zero padding read, a truncated
    stream, a bad deflate block, a wrong CRC or bytes after the members one line each."""
    import io

    from store.compression import decompressing
    from store.errors import BadInput

    data = bytes(range(256)) * 400
    gz = gzip.compress(data, mtime=0)
    for good, plain in ((gz, data), (gz + gz, data + data), (gz + bytes(10), data)):
        assert decompressing(io.BytesIO(good), "l")[1].read() == plain
    crc_off = gz[:-8] + bytes(4) + gz[-4:]
    for bad in (gz[:-3], gz[:20] + b"\xff" * 8 + gz[28:], crc_off, gz + b"junk"):
        with pytest.raises(BadInput, match="^l: corrupt compressed data"):
            decompressing(io.BytesIO(bad), "l")[1].read()
