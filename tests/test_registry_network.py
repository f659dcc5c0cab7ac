"""When the network misbehaves between strata and a registry (a proxy in the test path drops the
connection half-way through a layer, flips a byte, redirects to another host, or the registry is
gone): transfers resume sending less, credentials never leave for another host, and every failure
is one line that leaves the store as it was (or, for a pull stopped on the network, with only what it
verified kept outside the visible store)."""

from __future__ import annotations

import json
import os

import pytest
from helpers import strata
from registry_support import fake, free_port, image_id, registry, registry_blobs, store_files
from test_registry_transfer import fails, layered, requests

from store.upload import CHUNK

BIG = 8 << 20  # one layer a pull is interrupted in the middle of


@pytest.fixture
def reg(tmp_path):
    with registry(str(tmp_path / "registry")) as server:
        yield server


def _visible(root: str) -> list[str]:
    """The store's files that make up images (what a reader sees), not downloads or notes."""
    return [f for f in store_files(root) if f.split("/")[0] in ("blobs", "layers", "images", "repositories.json")]


def test_an_interrupted_pull_keeps_what_it_verified_and_the_next_one_resumes(tmp_path, reg):
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    small, big = layered(tmp_path, here, f"{reg.host}/app:1", [50_000, BIG])
    strata(here, "push", f"{reg.host}/app:1")
    size = registry_blobs(reg.data)[big]
    strata(there, "images")
    before = _visible(there)
    fakes = str(tmp_path / "fakes")
    # half-way through the big layer the connection drops, and the proxy lets nothing through after
    with fake(
        "proxy", fakes, "--upstream", f"http://{reg.host}", "--drop-after", str(size // 2), "--then", "refuse"
    ) as proxy:
        res = strata(there, "pull", "-q", f"{proxy.host}/app:1", check=False)
        assert res.code == 1 and len(res.err.strip().splitlines()) == 1 and "pull again to resume" in res.err, res
        assert proxy.events("drop")[0]["sent"] == size // 2
    assert _visible(there) == before  # no image, layer or blob: nothing half-written is visible
    downloads = tmp_path / "there" / "downloads" / "sha256"
    partial = big.split(":")[1] + ".partial"
    assert sorted(os.listdir(downloads)) == sorted([small.split(":")[1], partial])  # verified, and a part
    kept = os.path.getsize(downloads / partial)
    assert kept == size // 2  # all that arrived
    said = [line for line in strata(there, "system", "check").out.splitlines() if line.startswith("downloads/")]
    assert len(said) == 2 and f"downloads/sha256/{partial}: {kept} bytes" in said[0] + said[1]

    with fake("proxy", fakes, "--upstream", f"http://{reg.host}") as proxy:
        strata(there, "pull", "-q", f"{proxy.host}/app:1")
        blobs = requests(proxy, "GET", "/blobs/sha256")
        assert {e["path"].rsplit("/", 1)[1] for e in blobs} == {big, image_id(here, f"{reg.host}/app:1")}
        resumed = next(e for e in blobs if e["path"].endswith(big))
        assert resumed["range"] == f"bytes={kept}-" and resumed["body_out"] == size - kept  # the rest only
    assert image_id(there, f"{proxy.host}/app:1") == image_id(here, f"{reg.host}/app:1")
    assert os.listdir(tmp_path / "there" / "downloads" / "sha256") == []
    check = strata(there, "system", "check").out.splitlines()
    assert check[-1] == "store is consistent" and not [line for line in check if "downloads/" in line]


def test_a_connection_dropped_mid_layer_is_resumed_within_the_pull(tmp_path, reg):
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    _small, big = layered(tmp_path, here, f"{reg.host}/app:1", [50_000, BIG])
    strata(here, "push", f"{reg.host}/app:1")
    size = registry_blobs(reg.data)[big]
    with fake(
        "proxy", str(tmp_path / "fakes"), "--upstream", f"http://{reg.host}", "--drop-after", str(size // 3)
    ) as proxy:
        strata(there, "pull", "-q", f"{proxy.host}/app:1")
        again = requests(proxy, "GET", big)
        assert [e["range"] for e in again] == [f"bytes={size // 3}-"]
        assert again[0]["body_out"] == size - size // 3  # nothing sent twice
    assert image_id(there, f"{proxy.host}/app:1") == image_id(here, f"{reg.host}/app:1")


def test_a_registry_that_ignores_the_range_gives_the_whole_layer_again_under_the_extraction(tmp_path, reg):
    """The connection drops mid-layer and the registry answers the resumption with the whole blob:
    the download starts again from byte 0 under the extraction that reads it as it comes."""
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    _small, big = layered(tmp_path, here, f"{reg.host}/app:1", [50_000, BIG])
    strata(here, "push", f"{reg.host}/app:1")
    size = registry_blobs(reg.data)[big]
    with fake(
        "proxy",
        str(tmp_path / "fakes"),
        "--upstream",
        f"http://{reg.host}",
        "--drop-after",
        str(size // 2),
        "--no-range",
    ) as proxy:
        strata(there, "pull", "-q", f"{proxy.host}/app:1")
        again = requests(proxy, "GET", big)
        assert [(e["status"], e["body_out"]) for e in again] == [(200, size)]  # (the dropped one is not logged)
        assert len(proxy.events("range-dropped")) == 1
    assert image_id(there, f"{proxy.host}/app:1") == image_id(here, f"{reg.host}/app:1")
    assert strata(there, "system", "check").out.splitlines()[-1] == "store is consistent"


def test_an_interrupted_chunked_push_resumes_from_what_the_registry_acknowledged(tmp_path, reg):
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    size_wanted = 2 * CHUNK + CHUNK // 2
    _small, big = layered(tmp_path, here, "app:1", [1000, size_wanted])
    size = os.path.getsize(tmp_path / "here" / "blobs" / "sha256" / big.split(":")[1])
    fakes = str(tmp_path / "fakes")
    with fake(
        "proxy", fakes, "--upstream", f"http://{reg.host}", "--drop-after", str(CHUNK + CHUNK // 2), "--then", "refuse"
    ) as proxy:
        strata(here, "tag", "app:1", f"{proxy.host}/team/app:1")
        res = strata(here, "push", "-q", f"{proxy.host}/team/app:1", check=False)
        assert res.code == 1 and len(res.err.strip().splitlines()) == 1, res
        assert "push again to resume" in res.err and "Connection reset by peer" in res.err
        patches = requests(proxy, "PATCH")
        assert [p["content_range"] for p in patches] == [f"0-{CHUNK - 1}"]
    # the registry back at the same address
    with fake("proxy", fakes, "--upstream", f"http://{reg.host}", "--port", proxy.host.rsplit(":", 1)[1]) as proxy:
        strata(here, "tag", "app:1", f"{proxy.host}/team/app:1")
        digest = strata(here, "push", "-q", f"{proxy.host}/team/app:1").out.split()[-1]
        patches = requests(proxy, "PATCH")
        assert [p["content_range"] for p in patches] == [f"{CHUNK}-{2 * CHUNK - 1}", f"{2 * CHUNK}-{size - 1}"]
        assert sum(p["body_in"] for p in patches) == size - CHUNK  # the first chunk is not sent again
    assert registry_blobs(reg.data)[big] == size
    assert os.listdir(tmp_path / "here" / "uploads") == []
    strata(there, "pull", "-q", f"{reg.host}/team/app:1")
    assert image_id(there, f"{reg.host}/team/app:1") == image_id(here, "app:1")
    got = json.loads(strata(there, "inspect", f"{reg.host}/team/app:1").out)[0]["Id"]
    assert got == image_id(here, "app:1") and digest.startswith("sha256:")


def test_a_connection_dropped_mid_chunk_is_resumed_within_the_push(tmp_path, reg):
    here = str(tmp_path / "here")
    _small, big = layered(tmp_path, here, "app:1", [1000, CHUNK + CHUNK // 2])
    size = os.path.getsize(tmp_path / "here" / "blobs" / "sha256" / big.split(":")[1])
    with fake(
        "proxy", str(tmp_path / "fakes"), "--upstream", f"http://{reg.host}", "--drop-after", str(CHUNK + CHUNK // 4)
    ) as proxy:
        strata(here, "tag", "app:1", f"{proxy.host}/app:1")
        strata(here, "push", "-q", f"{proxy.host}/app:1")
        assert len(proxy.events("drop")) == 1
        patches = requests(proxy, "PATCH")
        assert [p["content_range"] for p in patches] == [f"0-{CHUNK - 1}", f"{CHUNK}-{size - 1}"]
    assert registry_blobs(reg.data)[big] == size


def test_a_redirected_blob_is_fetched_without_our_credentials(tmp_path, monkeypatch):
    """A registry that sends blob downloads to a CDN (another host): the pull follows, and the
    Authorization header stays with the registry."""
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    from registry_support import htpasswd

    path = str(tmp_path / "htpasswd")
    htpasswd(path, "alice", "s3cret")
    auth = f"htpasswd:\n  realm: strata-test\n  path: {path}\n"
    with registry(str(tmp_path / "registry"), auth=auth) as reg:
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
        strata(here, "login", "-u", "alice", "--password-stdin", reg.host, input=b"s3cret\n")
        layered(tmp_path, here, f"{reg.host}/app:1", [100_000, 200_000])
        strata(here, "push", "-q", f"{reg.host}/app:1")
        fakes = str(tmp_path / "fakes")
        with (
            fake("cdn", fakes, "--storage", reg.data) as cdn,
            fake(
                "proxy",
                fakes,
                "--upstream",
                f"http://{reg.host}",
                "--redirect-to",
                f"http://localhost:{cdn.host.rsplit(':', 1)[1]}",
            ) as proxy,
        ):
            strata(there, "login", "-u", "alice", "--password-stdin", proxy.host, input=b"s3cret\n")
            strata(there, "pull", "-q", f"{proxy.host}/app:1")
            redirects, served = proxy.events("redirect"), cdn.events("cdn")
            assert len(redirects) == 3 and all(e["auth"] for e in redirects)  # the registry got credentials
            assert len(served) == 3 and not any(e["auth"] for e in served)  # the CDN none
    assert image_id(there, f"{proxy.host}/app:1") == image_id(here, f"{reg.host}/app:1")


def test_failures_say_one_line_and_change_nothing(tmp_path, busybox_rootfs, reg):
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    layered(tmp_path, here, f"{reg.host}/app:1", [50_000, 300_000])
    strata(here, "push", f"{reg.host}/app:1")
    strata(there, "images")  # an empty store, made

    assert "not found in the registry" in fails(there, "pull", f"{reg.host}/app:nope")
    assert "not found in the registry" in fails(there, "pull", f"{reg.host}/other:1")
    assert "cannot connect: Connection refused" in fails(there, "pull", f"127.0.0.1:{free_port()}/app:1")
    assert "No such image" in fails(there, "push", f"{reg.host}/app:absent")
    assert "invalid reference format" in fails(there, "pull", f"{reg.host}/APP:1")
    assert "takes a tag" in fails(here, "push", f"{reg.host}/app@sha256:{'a' * 64}")
    # a byte flipped on the way: the digest check refuses it, and nothing is kept
    with fake("proxy", str(tmp_path / "fakes"), "--upstream", f"http://{reg.host}", "--corrupt") as proxy:
        err = fails(there, "pull", f"{proxy.host}/app:1")
        assert "hashes to" in err
    assert (
        not os.path.exists(tmp_path / "there" / "downloads")
        or os.listdir(tmp_path / "there" / "downloads" / "sha256") == []
    )
