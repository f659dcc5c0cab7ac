"""The registry client's pure parts, without a server: references, challenges, NO_PROXY, auth.json
lookups and platform matching."""

from __future__ import annotations

import base64
import json
import ssl

import pytest

from store.auth import parse_challenges
from store.authfile import AuthFile, normalise_key
from store.errors import BadInput, InvalidReference
from store.registry import DOCKER_HUB_HOST, Platform, _matches, parse_platform, parse_remote
from store.transport import TransportOptions, _exempt, is_loopback, system_roots, tls_context

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "ref, host, repo, tag, digest, local",
    [
        ("busybox", DOCKER_HUB_HOST, "library/busybox", "latest", None, "busybox:latest"),
        ("docker.io/you/app:2", DOCKER_HUB_HOST, "you/app", "2", None, "you/app:2"),
        ("127.0.0.1:5000/team/app", "127.0.0.1:5000", "team/app", "latest", None, "127.0.0.1:5000/team/app:latest"),
        ("localhost/app:v1", "localhost", "app", "v1", None, "localhost/app:v1"),
        (f"reg.example/app@{DIGEST}", "reg.example", "app", None, DIGEST, None),
        (f"reg.example/app:v1@{DIGEST}", "reg.example", "app", "v1", DIGEST, "reg.example/app:v1"),
    ],
)
def test_references_name_a_registry_a_repository_and_a_tag_or_digest(ref, host, repo, tag, digest, local):
    remote = parse_remote(ref)
    assert (remote.host, remote.repository, remote.tag, remote.digest, remote.local) == (host, repo, tag, digest, local)
    assert remote.reference == (digest or tag)


@pytest.mark.parametrize("ref", ["reg.example/App:1", "reg.example/app@sha256:abc", "reg.example/app@md5:" + "a" * 32])
def test_malformed_references_are_refused(ref):
    with pytest.raises(InvalidReference):
        parse_remote(ref)


def test_challenges_are_parsed_as_rfc_7235_says():
    [bearer, basic] = parse_challenges(
        'Bearer realm="https://auth.example/token",service="reg.example",'
        'scope="repository:a/b:pull,push", Basic realm="x \\"y\\""'
    )
    assert bearer.scheme == "bearer" and bearer.params == {
        "realm": "https://auth.example/token",
        "service": "reg.example",
        "scope": "repository:a/b:pull,push",
    }
    assert basic.scheme == "basic" and basic.params == {"realm": 'x "y"'}
    assert parse_challenges("Basic")[0].scheme == "basic"


@pytest.mark.parametrize(
    "host, port, no_proxy, exempt",
    [
        ("reg.example", 443, "example", True),
        ("reg.example", 443, ".example", True),
        ("reg.example", 443, "g.example", False),  # a suffix, not a domain
        ("reg.example", 443, "reg.example:5000", False),
        ("reg.example", 5000, "reg.example:5000", True),
        ("10.1.2.3", 443, "10.0.0.0/8", True),
        ("10.1.2.3", 443, "192.168.0.0/16, 10.1.2.3", True),
        ("anything", 80, "*", True),
        ("reg.example", 443, "", False),
    ],
)
def test_no_proxy_reads_as_curl_reads_it(host, port, no_proxy, exempt):
    assert _exempt(host, port, no_proxy) is exempt


def test_loopback_is_localhost_and_127_8_and_ipv6_one():
    assert all(is_loopback(h) for h in ("localhost:5000", "127.0.0.1:5000", "127.3.2.1", "[::1]:5000"))
    assert not any(is_loopback(h) for h in ("reg.example:5000", "10.0.0.1", "localhost.example"))


def test_auth_json_lookups_take_the_most_specific_key(tmp_path):
    def entry(user: str) -> dict:
        return {"auth": base64.b64encode(f"{user}:pw".encode()).decode()}

    path = tmp_path / "auth.json"
    path.write_text(
        json.dumps(
            {
                "auths": {
                    "reg.example": entry("everyone"),
                    "reg.example/team": entry("team"),
                    "https://index.docker.io/v1/": entry("hub"),
                    "old.example": {"username": "u", "password": "p"},
                }
            }
        )
    )
    auth = AuthFile(str(path))
    assert auth.credentials("reg.example", "team/app") == ("team", "pw")
    assert auth.credentials("reg.example", "teamwork/app") == ("everyone", "pw")
    assert auth.credentials(normalise_key(DOCKER_HUB_HOST), "library/busybox") == ("hub", "pw")
    assert auth.credentials("old.example", "x") == ("u", "p")
    assert auth.credentials("other.example", "x") is None
    path.write_text(json.dumps({"auths": {"reg.example": {"auth": "not base64!"}}}))
    with pytest.raises(BadInput, match="not base64 of user:password"):
        auth.credentials("reg.example", "x")
    path.write_text("[]")
    with pytest.raises(BadInput, match="not an auth file"):
        auth.credentials("reg.example", "x")


def test_platforms_match_by_os_architecture_and_variant():
    assert parse_platform("linux/arm/v7") == Platform("linux", "arm", "v7")
    with pytest.raises(BadInput):
        parse_platform("linux/")
    arm64_v8 = {"platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}
    arm_v6 = {"platform": {"os": "linux", "architecture": "arm", "variant": "v6"}}
    assert _matches(arm64_v8, Platform("linux", "arm64"))
    assert _matches(arm64_v8, Platform("linux", "arm64", "v8"))
    assert not _matches(arm_v6, Platform("linux", "arm", "v7"))
    assert _matches(arm_v6, Platform("linux", "arm"))
    assert not _matches({"platform": {"os": "windows", "architecture": "amd64"}}, Platform("linux", "amd64"))


def test_the_system_roots_are_loaded_once_and_never_changed(tmp_path, monkeypatch):
    """Every verified transport without a certs dir shares one context of the system's roots (parsing
    them costs ~20 ms a command: the zygote loads them for its forks); insecure or extended ones are
    their own, and leave the shared one verifying."""
    monkeypatch.setenv("STRATA_CERTS_D", str(tmp_path / "certs.d"))
    shared = tls_context("registry.example:5000", TransportOptions())
    assert shared is system_roots() and tls_context("other.example", TransportOptions()) is shared
    insecure = tls_context("registry.example:5000", TransportOptions(tls_verify=False))
    assert insecure is not shared and insecure.verify_mode == ssl.CERT_NONE
    (tmp_path / "certs.d" / "registry.example:5000").mkdir(parents=True)
    extended = tls_context("registry.example:5000", TransportOptions())
    assert extended is not shared
    assert (shared.verify_mode, shared.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert shared.cert_store_stats()["x509_ca"] > 0  # the system's roots are in it
