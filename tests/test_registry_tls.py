"""TLS and proxies: docker-registry with a certificate its own test CA signed. The certificate is
verified unless --tls-verify=false; its CA comes from --cert-dir or a certs.d dir named after the
registry (the tests point STRATA_CERTS_D at their own, never at /etc/containers). Plain HTTP only for
loopback or an insecure registry. HTTPS_PROXY/HTTP_PROXY/NO_PROXY honoured: through a forward proxy
that alone knows the made-up host name ``registry.test``."""

from __future__ import annotations

import os
import shutil

import pytest
from helpers import strata
from registry_support import fake, free_port, image_id, make_ca, registry
from test_registry_transfer import fails, layered

from store.transport import Transport, TransportOptions


@pytest.fixture
def tls(tmp_path, monkeypatch):
    ca, cert, key = make_ca(str(tmp_path / "pki"), ["127.0.0.1", "registry.test"])
    monkeypatch.setenv("STRATA_CERTS_D", str(tmp_path / "certs.d"))  # empty until a test fills it
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    with registry(str(tmp_path / "registry"), tls=(cert, key)) as reg:
        cert_dir = tmp_path / "cert-dir"
        cert_dir.mkdir()
        shutil.copy(ca, cert_dir / "ca.crt")
        yield reg, str(cert_dir)


def test_the_registry_certificate_is_verified_with_the_ca_given(tmp_path, tls):
    reg, cert_dir = tls
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    ref = f"{reg.host}/app:1"
    layered(tmp_path, here, ref, [20_000])
    err = fails(here, "push", ref)
    assert f"{reg.host}: TLS handshake failed: TLS certificate not trusted" in err and "--cert-dir" in err
    strata(here, "push", "--cert-dir", cert_dir, ref)

    strata(there, "images")
    assert "not trusted" in fails(there, "pull", ref)
    # the CA in certs.d/HOST:PORT/ca.crt, as podman and Docker read it (here under STRATA_CERTS_D)
    os.makedirs(tmp_path / "certs.d" / reg.host)
    shutil.copy(os.path.join(cert_dir, "ca.crt"), tmp_path / "certs.d" / reg.host / "ca.crt")
    strata(there, "pull", "-q", ref)
    assert image_id(there, ref) == image_id(here, ref)


def test_tls_verify_false_trusts_any_certificate(tmp_path, tls):
    reg, _cert_dir = tls
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    ref = f"{reg.host}/app:1"
    layered(tmp_path, here, ref, [20_000])
    strata(here, "push", "--tls-verify=false", ref)
    strata(there, "pull", "-q", "--tls-verify", "false", ref)
    assert image_id(there, ref) == image_id(here, ref)
    res = strata(there, "pull", "--tls-verify=maybe", ref, check=False)
    assert res.code == 125 and "--tls-verify" in res.err


def test_https_goes_through_the_proxy_unless_no_proxy_names_the_host(tmp_path, tls, monkeypatch):
    reg, cert_dir = tls
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    port = reg.host.rsplit(":", 1)[1]
    named = f"registry.test:{port}"  # only the proxy resolves it
    with fake("connect", str(tmp_path / "fakes"), "--map", f"{named}=127.0.0.1:{port}") as proxy:
        monkeypatch.setenv("HTTPS_PROXY", f"http://{proxy.host}")
        layered(tmp_path, here, f"{named}/app:1", [20_000])
        strata(here, "push", "--cert-dir", cert_dir, f"{named}/app:1")
        strata(there, "pull", "-q", "--cert-dir", cert_dir, f"{named}/app:1")
        assert {e["target"] for e in proxy.events("connect")} == {named}
        assert image_id(there, f"{named}/app:1") == image_id(here, f"{named}/app:1")

        monkeypatch.setenv("no_proxy", "example.com,.test")
        assert "cannot resolve the host name" in fails(there, "pull", "--cert-dir", cert_dir, f"{named}/app:1")
    # a proxy that is not there, and NO_PROXY for the registry's address: straight to it
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("no_proxy", "127.0.0.0/8")
    strata(there, "pull", "-q", "--cert-dir", cert_dir, f"{reg.host}/app:1")
    monkeypatch.delenv("no_proxy")
    assert "through the proxy" in fails(there, "pull", "--cert-dir", cert_dir, f"{reg.host}/app:1")


def test_plain_http_only_for_loopback_or_an_insecure_registry(tmp_path, monkeypatch):
    """A registry without TLS at a name that is not loopback is refused, not spoken to in clear;
    --tls-verify=false marks it insecure."""
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    for name in ("NO_PROXY", "no_proxy", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    with registry(str(tmp_path / "registry")) as reg:
        layered(tmp_path, here, f"{reg.host}/app:1", [20_000])
        strata(here, "push", f"{reg.host}/app:1")  # loopback: plain HTTP is fine
        named = f"plain.test:{reg.host.rsplit(':', 1)[1]}"
        with fake("connect", str(tmp_path / "fakes"), "--map", f"{named}={reg.host}") as proxy:
            monkeypatch.setenv("HTTPS_PROXY", f"http://{proxy.host}")
            monkeypatch.setenv("HTTP_PROXY", f"http://{proxy.host}")
            strata(there, "images")
            assert "TLS handshake failed" in fails(there, "pull", f"{named}/app:1")
            assert proxy.events("forward") == []  # nothing went in clear
            strata(there, "pull", "-q", "--tls-verify=false", f"{named}/app:1")
            assert {e["method"] for e in proxy.events("forward")} >= {"GET"}
        assert image_id(there, f"{named}/app:1") == image_id(here, f"{reg.host}/app:1")


def test_a_loopback_registry_is_asked_in_plain_http_first_and_one_with_tls_then_in_https(tmp_path, tls):
    """No TLS handshake for the registry most commands talk to (plain, on loopback): its answer in
    plain HTTP settles the scheme. One with TLS on loopback refuses plain HTTP and is spoken to in
    HTTPS, its certificate verified."""
    with registry(str(tmp_path / "plain")) as plain:
        transport = Transport(plain.host, TransportOptions())
        with transport.ping() as resp:
            assert (resp.status, transport.scheme) == (200, "http")
        assert [key.key_scheme for key in transport._managers[None].pools.keys()] == ["http"]  # none for https
    reg, cert_dir = tls
    transport = Transport(reg.host, TransportOptions(cert_dir=cert_dir))
    with transport.ping() as resp:
        assert (resp.status, transport.scheme) == (200, "https")
