"""Pull and push against Debian's docker-registry on loopback, with skopeo and umoci on the other side,
and a proxy in the path where the network must misbehave: round trips both ways, indexes and
platforms, digests, compressions, parallel and resumed transfers, skips and mounts, redirects, and
the failures that must say one line and leave the store as it was."""

from __future__ import annotations

import glob
import gzip
import json
import os
import subprocess
import urllib.request

import pytest
import zstandard
from helpers import REPO, STRATA, config_for, docker_v12_save, sha256, strata, tar_bytes, wait_for
from registry_support import fake, host_arch, image_id, put_index, registry, registry_blobs, store_files, tree
from test_cli_progress import screen

from runner.cli.format import human_size
from store.upload import CHUNK


@pytest.fixture
def reg(tmp_path):
    with registry(str(tmp_path / "registry")) as server:
        yield server


def layered(tmp_path, root: str, ref: str, sizes: list[int], seed: str = "") -> list[str]:
    """Load an image of one layer per size (a file of that many random bytes each) and tag it ``ref``.
    Returns the layers' digests (uncompressed: blob digest = diff_id)."""
    layers = [tar_bytes([{"name": f"layer{i}{seed}", "data": os.urandom(n)}]) for i, n in enumerate(sizes)]
    archive = tmp_path / f"{abs(hash((ref, seed)))}.tar"
    archive.write_bytes(docker_v12_save(layers, ["tmp/layered:1"]))
    strata(root, "load", "-i", str(archive))
    strata(root, "tag", "tmp/layered:1", ref)
    strata(root, "rmi", "tmp/layered:1")
    return [sha256(layer) for layer in layers]


def bb(root: str, rootfs: str, ref: str) -> str:
    strata(root, "import", rootfs, ref)
    return image_id(root, ref)


def fails(root: str, *args: str) -> str:
    """The command fails with one line on stderr and nothing on stdout, and changes no file of the store."""
    before = store_files(root)
    res = strata(root, *args, check=False)
    assert res.code == 1 and res.out == "" and len(res.err.strip().splitlines()) == 1, res
    assert store_files(root) == before
    return res.err


def requests(proxy, method: str | None = None, kind: str = "") -> list[dict]:
    return [e for e in proxy.events("request") if (method is None or e["method"] == method) and kind in e["path"]]


# -- with skopeo and umoci ------------------------------------------------------------------------
def test_what_strata_pushes_skopeo_pulls_and_umoci_unpacks_to_the_same_tree(tmp_path, busybox_rootfs, reg):
    here = str(tmp_path / "here")
    ref = f"{reg.host}/team/bb:v1"
    bb(here, busybox_rootfs, ref)
    digest = strata(here, "push", ref).out.split()[-1]
    inspected = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"], check=True, capture_output=True
        ).stdout
    )
    assert inspected["Digest"] == digest
    layout, bundle = tmp_path / "layout", tmp_path / "bundle"
    subprocess.run(
        ["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:v1"], check=True
    )
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:v1", str(bundle)], check=True, capture_output=True)
    assert tree(str(bundle / "rootfs")) == tree(busybox_rootfs)


@pytest.mark.parametrize(
    "how",
    [["--format", "v2s2"], ["--format", "oci", "--dest-compress-format", "zstd"]],
    ids=["docker-schema2-gzip", "oci-zstd"],
)
def test_what_skopeo_pushes_strata_pulls_to_the_same_tree(tmp_path, busybox_rootfs, reg, how):
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    wanted = bb(here, busybox_rootfs, "bb:1")
    archive = tmp_path / "bb.tar"
    strata(here, "save", "-o", str(archive), "bb:1")
    ref = f"{reg.host}/sk/bb:1"
    subprocess.run(
        ["skopeo", "copy", "-q", "--dest-tls-verify=false", *how, f"docker-archive:{archive}", f"docker://{ref}"],
        check=True,
    )
    manifest = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"], check=True, capture_output=True
        ).stdout
    )
    media = manifest["layers"][0]["mediaType"]
    assert media.endswith("gzip" if "v2s2" in how else "zstd")
    strata(there, "pull", "-q", ref)
    assert image_id(there, ref) == manifest["config"]["digest"]
    if "v2s2" in how:  # the config as it was (skopeo rewrites it to make an OCI image)
        assert manifest["config"]["digest"] == wanted
    info = json.loads(next((tmp_path / "there" / "layers").glob("*/layer.json")).read_text())
    assert info["blob"] == manifest["layers"][0]["digest"] != info["diff_id"]  # kept as pulled
    layer_dir = str(next((tmp_path / "there" / "layers").glob("*/diff")))
    assert tree(layer_dir) == tree(busybox_rootfs)


def test_gzip_zstd_and_plain_layers_of_one_image_pull_and_push_as_they_are(tmp_path, reg):
    """An OCI layout with one layer of each compression: loaded, pushed, pulled elsewhere."""
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    tars = [tar_bytes([{"name": f"f{i}", "data": os.urandom(20000)}]) for i in range(3)]
    blobs = [gzip.compress(tars[0]), zstandard.ZstdCompressor().compress(tars[1]), tars[2]]
    medias = [
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.v1.tar",
    ]
    layout = tmp_path / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)

    def put(data: bytes) -> dict:
        (layout / "blobs" / "sha256" / sha256(data).split(":")[1]).write_bytes(data)
        return {"digest": sha256(data), "size": len(data)}

    config = config_for([sha256(t) for t in tars])
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **put(config)},
            "layers": [{"mediaType": m, **put(b)} for m, b in zip(medias, blobs, strict=True)],
        }
    ).encode()
    (layout / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        **put(manifest),
                        "annotations": {"org.opencontainers.image.ref.name": f"{reg.host}/mixed:1"},
                    }
                ],
            }
        )
    )
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    strata(here, "load", "-i", str(layout))
    strata(here, "push", f"{reg.host}/mixed:1")
    assert {sha256(b) for b in blobs} <= set(registry_blobs(reg.data))  # sent as stored
    strata(there, "pull", "-q", f"{reg.host}/mixed:1")
    assert image_id(there, f"{reg.host}/mixed:1") == sha256(config)
    kept = {json.loads(p.read_text())["media_type"] for p in (tmp_path / "there" / "layers").glob("*/layer.json")}
    assert kept == set(medias)


# -- indexes, platforms, digests ------------------------------------------------------------------
def _index(reg, here: str, busybox_rootfs: str) -> tuple[str, str, str]:
    """A tag naming an index of two images: this host's platform and linux/s390x (or ppc64le)."""
    wanted = bb(here, busybox_rootfs, f"{reg.host}/multi:host")
    strata(here, "push", f"{reg.host}/multi:host")
    strata(here, "import", "--change", 'CMD ["other"]', busybox_rootfs, f"{reg.host}/multi:other")
    strata(here, "push", f"{reg.host}/multi:other")
    arch = host_arch()
    other = "s390x" if arch != "s390x" else "ppc64le"
    index = put_index(reg.host, "multi", "all", {other: "other", arch: "host"})
    return wanted, other, sha256(index)


def test_an_index_gives_this_hosts_image_or_the_platform_asked_for(tmp_path, busybox_rootfs, reg):
    here, there, third = (str(tmp_path / n) for n in ("here", "there", "third"))
    wanted, other, index_digest = _index(reg, here, busybox_rootfs)
    pulled = strata(there, "pull", f"{reg.host}/multi:all").out.splitlines()
    assert pulled[0] == f"Digest: {index_digest}"  # what the tag names, as Docker prints it
    assert image_id(there, f"{reg.host}/multi:all") == wanted
    strata(third, "pull", "-q", "--platform", f"linux/{other}", f"{reg.host}/multi:all")
    assert image_id(third, f"{reg.host}/multi:all") == image_id(here, f"{reg.host}/multi:other")

    err = fails(there, "pull", "--platform", "linux/mips64le", f"{reg.host}/multi:all")
    assert "no image for linux/mips64le" in err and f"linux/{other}" in err
    assert "not os/arch" in fails(there, "pull", "--platform", "linux", f"{reg.host}/multi:all")


def test_a_pull_by_digest_checks_the_manifest_and_tags_nothing(tmp_path, busybox_rootfs, reg):
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    wanted, _other, index_digest = _index(reg, here, busybox_rootfs)
    ref = f"{reg.host}/multi@{index_digest}"
    out = strata(there, "pull", ref).out.splitlines()
    assert out == [f"Digest: {index_digest}", f"Status: Downloaded image for {ref}", ref]
    assert strata(there, "images", "-q", "--no-trunc").out.split() == [wanted]
    assert json.loads(strata(there, "inspect", wanted).out)[0]["RepoTags"] == []
    # a digest the registry does not have; and a malformed one
    assert "not found in the registry" in fails(there, "pull", f"{reg.host}/multi@sha256:{'0' * 64}")
    assert "invalid reference format" in fails(there, "pull", f"{reg.host}/multi@sha256:abc")


# -- what is not sent -----------------------------------------------------------------------------
def test_layers_already_here_are_not_downloaded(tmp_path, reg):
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    layered(tmp_path, here, f"{reg.host}/base:1", [30000, 30000])
    strata(here, "push", f"{reg.host}/base:1")
    with fake("proxy", str(tmp_path / "fakes"), "--upstream", f"http://{reg.host}") as proxy:
        strata(there, "pull", "-q", f"{proxy.host}/base:1")
        wait_for(lambda: len(requests(proxy, "GET", "/blobs/sha256")) >= 3, what="the proxy's log")
        assert len(requests(proxy, "GET", "/blobs/sha256")) == 3  # two layers and the config
        n = len(proxy.events("request"))
        strata(there, "pull", "-q", f"{proxy.host}/base:1")  # again: the image is here
        wait_for(lambda: len(proxy.events("request")) > n, what="the proxy's log")
        # the manifest, and nothing else: no blob (not even the config: it is read here), and no
        # GET /v2/ either (a loopback registry's first request stands for it)
        assert [(e["method"], e["path"]) for e in proxy.events("request")[n:]] == [("GET", "/v2/base/manifests/1")]
    assert os.listdir(tmp_path / "there" / "downloads" / "sha256") == []  # nothing left behind


def _inodes(root: str) -> dict[str, tuple[int, int, int]]:
    """Every entry of a store (its lock files too) with its inode number, mtime and ctime: a file
    or directory made, replaced, written or chmodded changes here."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in [".", *dirs, *files]:
            st = os.lstat(os.path.join(d, name))
            out[os.path.relpath(os.path.join(d, name), root)] = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
    return out


def test_a_pull_of_an_image_that_is_here_writes_nothing_to_the_store(tmp_path, reg):
    """No staging directory, no config staged again, no sync, no tag file rewritten: the store as it
    was, to the inode (the fast path of a warm pull, and nothing for a crash to interrupt)."""
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    layered(tmp_path, here, f"{reg.host}/base:1", [3000, 3000])
    strata(here, "push", f"{reg.host}/base:1")
    strata(there, "pull", "-q", f"{reg.host}/base:1")
    before = _inodes(there)
    assert strata(there, "pull", "-q", f"{reg.host}/base:1").out == f"{reg.host}/base:1\n"
    assert _inodes(there) == before
    strata(there, "tag", f"{reg.host}/base:1", "other:1")
    strata(there, "rmi", f"{reg.host}/base:1")  # the image stays (tagged other:1): the pull only tags it
    strata(there, "pull", "-q", f"{reg.host}/base:1")
    assert (
        strata(there, "images", "-q", "--no-trunc", f"{reg.host}/base:1").out
        == strata(there, "images", "-q", "--no-trunc", "other:1").out
        != ""
    )


def _settled(proxy, last, after: int = 0) -> int:
    """Wait until the proxy has logged a request matching ``last`` past the first ``after`` (it logs one
    once it has answered it: the client may have ended before); the number of requests logged then."""
    wait_for(lambda: any(last(e) for e in proxy.events("request")[after:]), what="the proxy's log")
    return len(proxy.events("request"))


def test_a_push_skips_what_the_registry_has_and_mounts_what_another_repository_has(tmp_path, reg):
    here = str(tmp_path / "here")
    layered(tmp_path, here, "img:1", [40000, 2 * CHUNK // 3])
    with fake("proxy", str(tmp_path / "fakes"), "--upstream", f"http://{reg.host}") as proxy:
        strata(here, "tag", "img:1", f"{proxy.host}/a/img:1")
        first = strata(here, "push", f"{proxy.host}/a/img:1").out.split()[-1]
        uploads = requests(proxy, "PUT", "/blobs/uploads/")
        assert len(uploads) == 3 and all(u["body_in"] > 0 for u in uploads)  # each blob in one PUT (small)
        assert requests(proxy, "PATCH") == []

        n = _settled(proxy, lambda e: e["method"] == "PUT" and "/manifests/" in e["path"])
        assert strata(here, "push", f"{proxy.host}/a/img:1").out.split()[-1] == first
        wait_for(lambda: len(proxy.events("request")) >= n + 1, what="the proxy's log")
        again = proxy.events("request")[n:]
        # the tag (a loopback registry's first request: no ping) names these bytes already: the
        # registry has every blob they name, so nothing else is asked or sent
        assert [e["method"] for e in again] == ["HEAD"]
        assert "/manifests/1" in again[0]["path"]

        # the tag moved to another image meanwhile: the blobs are all there, the manifest is sent again
        layered(tmp_path, here, f"{proxy.host}/a/img:1", [1000], seed="other")
        strata(here, "push", f"{proxy.host}/a/img:1")
        strata(here, "tag", "img:1", f"{proxy.host}/a/img:1")
        n = _settled(proxy, lambda e: e["method"] == "PUT" and "/manifests/" in e["path"], after=n + 1)
        assert strata(here, "push", f"{proxy.host}/a/img:1").out.split()[-1] == first
        _settled(proxy, lambda e: e["method"] == "PUT" and "/manifests/" in e["path"], after=n)
        again = proxy.events("request")[n:]
        assert [e["method"] for e in again] == ["HEAD", "HEAD", "HEAD", "HEAD", "PUT"]
        with urllib.request.urlopen(
            urllib.request.Request(
                f"http://{reg.host}/v2/a/img/manifests/1",
                method="HEAD",
                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
            )
        ) as resp:
            assert resp.headers["Docker-Content-Digest"] == first

        n = len(proxy.events("request"))  # (the last PUT above is logged: settled)
        strata(here, "tag", "img:1", f"{proxy.host}/b/img:1")
        strata(here, "push", f"{proxy.host}/b/img:1")
        elsewhere = proxy.events("request")[n:]
        mounts = [e for e in elsewhere if e["method"] == "POST"]
        assert len(mounts) == 3 and all("mount=" in e["query"] and e["status"] == 201 for e in mounts)
        assert not [e for e in elsewhere if e["method"] in ("PATCH",) or (e["method"] == "PUT" and e["body_in"] > 5000)]


# -- parallel, with progress ----------------------------------------------------------------------
def test_layers_download_in_parallel_with_one_progress_line_each(tmp_path, reg):
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    digests = layered(tmp_path, here, f"{reg.host}/three:1", [300000, 200000, 100000])
    strata(here, "push", f"{reg.host}/three:1")
    sizes = registry_blobs(reg.data)
    # the proxy holds each layer's answer until all three are asked for at once (or 30 s went by)
    with fake("proxy", str(tmp_path / "fakes"), "--upstream", f"http://{reg.host}", "--barrier", "3") as proxy:
        master, slave = os.openpty()
        proc = subprocess.Popen(
            [*STRATA, "--root", there, "pull", f"{proxy.host}/three:1"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=slave,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": REPO},
        )
        os.close(slave)
        shown = b""
        while chunk := _read(master):
            shown += chunk
        os.close(master)
        assert proc.wait(timeout=120) == 0
        assert [e["met"] for e in proxy.events("barrier")] == [True, True, True]
    assert sorted(screen(shown.decode())) == sorted(
        f"{d.split(':')[1][:12]}: Pull complete {human_size(sizes[d])}" for d in digests
    )


def test_a_layer_is_extracted_while_it_downloads(tmp_path, reg):
    """Through a proxy at 2 MB/s, the layer's file is in the pull's staging directory while its blob
    is still a ``.partial`` download (a pull that waited for the download would make it only after)."""
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    _small, big = layered(tmp_path, here, f"{reg.host}/slow:1", [1000, 6 << 20])
    strata(here, "push", f"{reg.host}/slow:1")
    partial = os.path.join(there, "downloads", "sha256", big.split(":")[1] + ".partial")
    with fake("proxy", str(tmp_path / "fakes"), "--upstream", f"http://{reg.host}", "--rate", str(2 << 20)) as proxy:
        proc = subprocess.Popen(
            [*STRATA, "--root", there, "pull", "-q", f"{proxy.host}/slow:1"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": REPO},
        )
        try:
            staged = os.path.join(there, "tmp", "*", "*-layer", "diff", "layer1")

            def extracting_while_downloading() -> bool:
                size = os.path.getsize(partial) if os.path.exists(partial) else 0
                return 0 < size < registry_blobs(reg.data)[big] and bool(glob.glob(staged))

            wait_for(extracting_while_downloading, timeout=60, what="the layer's file while its blob downloads")
            assert proc.wait(timeout=120) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert image_id(there, f"{proxy.host}/slow:1") == image_id(here, f"{reg.host}/slow:1")
    assert strata(there, "system", "check").out.splitlines()[-1] == "store is consistent"


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the other end is gone
        return b""
