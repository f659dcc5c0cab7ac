"""Credentials: login and logout keep them in a private auth.json (containers' format), and pull and push
present them as the registry asks: HTTP Basic (docker-registry with htpasswd), or bearer tokens from
a token server for the scopes each operation needs, reused, and asked for again when refused."""

from __future__ import annotations

import base64
import json
import stat

import pytest
from helpers import strata
from registry_support import fake, htpasswd, image_id, registry, signing_pair
from test_registry_transfer import fails, layered


@pytest.fixture
def config(tmp_path, monkeypatch):
    """Where auth.json goes by default ($XDG_CONFIG_HOME/strata), never the user's own."""
    path = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(path))
    return path


@pytest.fixture
def basic(tmp_path):
    path = str(tmp_path / "htpasswd")
    htpasswd(path, "alice", "s3cret")
    with registry(str(tmp_path / "registry"), auth=f"htpasswd:\n  realm: strata-test\n  path: {path}\n") as reg:
        yield reg


def login(root: str, host: str, user: str, password: str, *flags: str, check: bool = True):
    return strata(
        root, "login", "-u", user, "--password-stdin", *flags, host, input=password.encode() + b"\n", check=check
    )


def test_login_keeps_credentials_private_in_containers_format_and_logout_forgets_them(tmp_path, basic, config):
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    ref = f"{basic.host}/team/app:1"
    layered(tmp_path, here, ref, [20_000])
    auth_json = config / "strata" / "auth.json"

    assert "authentication required (strata login " in fails(here, "push", ref)
    wrong = login(here, basic.host, "alice", "nope-nope", check=False)
    assert wrong.code == 1 and wrong.err.strip().splitlines() == [
        f"Error: {basic.host}: login failed: invalid username or password"
    ]
    assert "nope-nope" not in wrong.out + wrong.err and not auth_json.exists()

    assert login(here, basic.host, "alice", "s3cret").out == "Login Succeeded!\n"
    assert stat.S_IMODE(auth_json.stat().st_mode) == 0o600
    assert stat.S_IMODE(auth_json.parent.stat().st_mode) == 0o700
    doc = json.loads(auth_json.read_text())
    assert doc == {"auths": {basic.host: {"auth": base64.b64encode(b"alice:s3cret").decode()}}}

    digest = strata(here, "push", ref).out.split()[-1]
    strata(there, "pull", "-q", ref)
    assert image_id(there, ref) == image_id(here, ref) and digest.startswith("sha256:")

    assert strata(here, "logout", basic.host).out == f"Removed login credentials for {basic.host}\n"
    assert json.loads(auth_json.read_text()) == {"auths": {}}
    assert "authentication required" in fails(there, "pull", ref)
    assert "not logged in to" in strata(here, "logout", basic.host, check=False).err


def test_the_password_never_goes_on_the_command_line(tmp_path, basic, config):
    res = strata(str(tmp_path / "s"), "login", "-u", "alice", "-p", "s3cret", basic.host, check=False)
    assert res.code == 125 and "unknown flag: -p" in res.err
    res = strata(str(tmp_path / "s"), "login", basic.host, check=False)  # no terminal to prompt on
    assert res.code == 1 and "stdin is not a terminal" in res.err


def test_any_auth_file_in_docker_or_containers_format_can_be_named(tmp_path, basic, config):
    """--authfile: Docker's config.json (its other keys kept), read by pull and push."""
    here = str(tmp_path / "here")
    docker = tmp_path / "docker" / "config.json"
    docker.parent.mkdir()
    docker.write_text(
        json.dumps(
            {
                "auths": {f"https://{basic.host}/v1/": {"auth": base64.b64encode(b"alice:s3cret").decode()}},
                "psFormat": "table {{.ID}}",
            }
        )
    )
    ref = f"{basic.host}/app:1"
    layered(tmp_path, here, ref, [10_000])
    strata(here, "push", "--authfile", str(docker), ref)  # Docker's key spelling is read
    assert not (config / "strata" / "auth.json").exists()
    strata(here, "logout", "--authfile", str(docker), basic.host)
    assert json.loads(docker.read_text()) == {"auths": {}, "psFormat": "table {{.ID}}"}
    login(here, f"{basic.host}/team", "alice", "s3cret", "--authfile", str(docker))  # a namespace's own
    assert list(json.loads(docker.read_text())["auths"]) == [f"{basic.host}/team"]
    strata(here, "tag", ref, f"{basic.host}/team/app:1")
    strata(here, "push", "--authfile", str(docker), f"{basic.host}/team/app:1")
    assert "authentication required" in fails(here, "push", "--authfile", str(docker), ref)  # not for app


@pytest.fixture
def token_registry(tmp_path):
    """docker-registry whose auth is a token server: alice may pull and push anything, bob only pull,
    anyone may pull public/*."""
    cert, key = signing_pair(str(tmp_path / "signing"))
    with fake(
        "token",
        str(tmp_path / "fakes"),
        "--key",
        key,
        "--cert",
        cert,
        "--users",
        "alice:s3cret:pull+push,bob:b0b:pull",
        "--anonymous-pull",
        "public/",
    ) as tokens:
        auth = (
            f"token:\n  realm: http://{tokens.host}/token\n  service: strata-registry\n"
            f"  issuer: strata-test-issuer\n  rootcertbundle: {cert}\n"
        )
        with registry(str(tmp_path / "registry"), auth=auth) as reg:
            yield reg, tokens


def test_tokens_are_asked_for_the_scopes_each_operation_needs_and_reused(tmp_path, token_registry, config):
    reg, tokens = token_registry
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    login(here, reg.host, "alice", "s3cret")
    assert [(e["user"], e["account"], e["scopes"]) for e in tokens.events("token")] == [("alice", "alice", [])]

    layered(tmp_path, here, f"{reg.host}/team/app:1", [30_000, 30_000, 30_000])
    strata(here, "push", f"{reg.host}/team/app:1")  # 4 blobs, in parallel, and a manifest: one token
    strata(there, "pull", "-q", f"{reg.host}/team/app:1")  # a manifest and 4 blobs: one token
    assert [e["scopes"] for e in tokens.events("token")[1:]] == [
        ["repository:team/app:pull,push"],
        ["repository:team/app:pull"],
    ]
    strata(here, "tag", f"{reg.host}/team/app:1", f"{reg.host}/other/app:1")
    n = len(tokens.events("token"))
    strata(here, "push", f"{reg.host}/other/app:1")  # the layers are mounted from team/app
    assert [e["scopes"] for e in tokens.events("token")[n:]] == [
        ["repository:other/app:pull,push"],
        ["repository:other/app:pull,push", "repository:team/app:pull"],
    ]
    assert image_id(there, f"{reg.host}/team/app:1") == image_id(here, f"{reg.host}/other/app:1")


def test_token_refusals_say_who_and_why_in_one_line(tmp_path, token_registry, config):
    reg, tokens = token_registry
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    login(here, reg.host, "alice", "s3cret")
    layered(tmp_path, here, f"{reg.host}/public/app:1", [10_000])
    strata(here, "push", f"{reg.host}/public/app:1")
    strata(here, "tag", f"{reg.host}/public/app:1", f"{reg.host}/team/app:1")
    strata(here, "push", f"{reg.host}/team/app:1")
    strata(here, "logout", reg.host)

    strata(there, "pull", "-q", f"{reg.host}/public/app:1")  # anonymous, allowed
    assert "authentication required (strata login" in fails(there, "pull", f"{reg.host}/team/app:1")
    wrong = login(there, reg.host, "alice", "wrong", check=False)
    assert wrong.code == 1 and "login failed: invalid username or password" in wrong.err
    login(there, reg.host, "bob", "b0b")
    strata(there, "pull", "-q", f"{reg.host}/team/app:1")  # bob may pull
    strata(there, "tag", f"{reg.host}/team/app:1", f"{reg.host}/team/bobs:1")
    assert "access denied for user bob" in fails(there, "push", f"{reg.host}/team/bobs:1")
    # credentials that went bad since the login
    (config / "strata" / "auth.json").write_text(
        json.dumps({"auths": {reg.host: {"auth": base64.b64encode(b"bob:changed").decode()}}})
    )
    assert "invalid username or password" in fails(there, "pull", f"{reg.host}/team/app:1")


def test_a_token_the_registry_refuses_is_asked_for_again(tmp_path, token_registry, config):
    reg, tokens = token_registry
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    login(here, reg.host, "alice", "s3cret")
    layered(tmp_path, here, f"{reg.host}/team/app:1", [30_000, 30_000])
    strata(here, "push", f"{reg.host}/team/app:1")
    # the proxy takes the token off one blob request: the registry answers 401, as to an expired token
    with fake("proxy", str(tmp_path / "fakes"), "--upstream", f"http://{reg.host}", "--strip-auth-once") as proxy:
        login(there, proxy.host, "alice", "s3cret")
        n = len(tokens.events("token"))
        strata(there, "pull", "-q", f"{proxy.host}/team/app:1")
        assert len(proxy.events("stripped")) == 1
        assert [e["scopes"] for e in tokens.events("token")[n:]] == [["repository:team/app:pull"]] * 2
    assert image_id(there, f"{proxy.host}/team/app:1") == image_id(here, f"{reg.host}/team/app:1")
