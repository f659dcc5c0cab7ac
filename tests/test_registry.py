"""strata push / pull against a real registry (Debian's docker-registry, the CNCF distribution
server) on loopback, and skopeo on the other side."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest
from helpers import stop_process, strata
from registry_support import host_arch, put_index


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def registry(tmp_path):
    """``host:port`` of a registry serving from a temp dir; stopped (by pid) afterwards."""
    if shutil.which("docker-registry") is None:
        pytest.fail("docker-registry is required (make test installs it)")
    port = _free_port()
    data = tmp_path / "registry"
    config = tmp_path / "registry.yml"
    config.write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {data}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # ready once /v2/ answers
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                assert proc.poll() is None, "docker-registry exited"
                assert time.monotonic() < deadline, "docker-registry did not answer"
                time.sleep(0.05)
        yield f"127.0.0.1:{port}", data
    finally:
        stop_process(proc.pid)
        proc.wait()


def _id(root: str, ref: str) -> str:
    return str(json.loads(strata(root, "inspect", ref).out)[0]["Id"])


def _image(root: str, busybox_rootfs: str, ref: str) -> str:
    strata(root, "import", busybox_rootfs, "bb")
    strata(root, "tag", "bb", ref)
    return _id(root, ref)


def test_push_then_pull_gives_the_same_image(tmp_path, busybox_rootfs, registry):
    host, _ = registry
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    ref = f"{host}/team/bb:v1"
    image_id = _image(here, busybox_rootfs, ref)
    pushed = strata(here, "push", ref)
    assert pushed.out.startswith("v1: digest: sha256:")
    digest = pushed.out.split()[-1]
    assert strata(here, "push", ref).out.split()[-1] == digest  # again: the blobs are there, same manifest

    pulled = strata(there, "pull", ref)
    assert pulled.out.splitlines() == [f"Digest: {digest}", f"Status: Downloaded image for {ref}", ref]
    assert _id(there, ref) == image_id
    assert strata(there, "run", "--rm", ref, "ls", "/bin").out.split() == [
        "busybox",
        "cat",
        "echo",
        "ls",
        "sh",
        "sleep",
    ]

    inspected = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"], check=True, capture_output=True
        ).stdout
    )
    assert inspected["Digest"] == digest


def test_pull_what_skopeo_pushed_compressed(tmp_path, busybox_rootfs, registry):
    host, _ = registry
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    image_id = _image(here, busybox_rootfs, "bb:1")
    archive = tmp_path / "bb.tar"
    strata(here, "save", "-o", str(archive), "bb:1")
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--dest-compress",
            f"docker-archive:{archive}",
            f"docker://{host}/sk/bb:gz",
        ],
        check=True,
    )
    strata(there, "pull", "-q", f"{host}/sk/bb:gz")
    assert _id(there, f"{host}/sk/bb:gz") == image_id
    layers = []
    for path in glob.glob(os.path.join(there, "layers", "*", "layer.json")):
        with open(path) as f:
            layers.append(json.load(f))
    assert [layer["media_type"] for layer in layers] == ["application/vnd.oci.image.layer.v1.tar+gzip"]
    assert layers[0]["blob"] != layers[0]["diff_id"]  # kept as pulled: the gzip blob


def test_pull_a_multi_platform_tag_takes_this_host_s_image(tmp_path, busybox_rootfs, registry):
    """A tag that names an image index (a manifest list): the manifest for this host's platform."""
    host, _ = registry
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    image_id = _image(here, busybox_rootfs, f"{host}/multi:amd")
    strata(here, "push", f"{host}/multi:amd")
    strata(here, "import", "--change", 'CMD ["other"]', busybox_rootfs, f"{host}/multi:other")
    strata(here, "push", f"{host}/multi:other")
    arch = host_arch()
    put_index(host, "multi", "all", {"s390x" if arch != "s390x" else "ppc64le": "other", arch: "amd"})
    strata(there, "pull", "-q", f"{host}/multi:all")
    assert _id(there, f"{host}/multi:all") == image_id != _id(here, f"{host}/multi:other")


def _store_files(root: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs if f != "lock")


def test_bad_pulls_and_pushes_say_one_line_and_change_nothing(tmp_path, busybox_rootfs, registry):
    host, data = registry
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    ref = f"{host}/bb:v1"
    _image(here, busybox_rootfs, ref)
    strata(here, "push", ref)
    strata(there, "images")  # an empty store, made
    before = _store_files(there)

    def fails(*args: str) -> str:
        res = strata(there, *args, check=False)
        assert res.code == 1 and res.out == "" and len(res.err.strip().splitlines()) == 1, res
        assert _store_files(there) == before
        return res.err

    assert "not found in the registry" in fails("pull", f"{host}/bb:nope")
    assert "not found in the registry" in fails("pull", f"{host}/other:v1")
    assert "Connection refused" in fails("pull", f"127.0.0.1:{_free_port()}/bb:v1")
    assert "No such image" in fails("push", f"{host}/bb:absent")
    assert "invalid reference format" in fails("pull", f"{host}/BB:v1")

    # a registry that serves a corrupt layer: the digest check refuses it, nothing is added
    layers = [
        p for p in glob.glob(str(data / "docker/registry/v2/blobs/sha256/*/*/data")) if os.path.getsize(p) > 100_000
    ]
    assert len(layers) == 1
    with open(layers[0], "r+b") as f:
        f.seek(50_000)
        byte = f.read(1)
        f.seek(50_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    err = fails("pull", ref)
    assert "sha256" in err
