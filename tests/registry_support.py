"""Registries for the tests: Debian's docker-registry (the CNCF distribution server) on a free loopback
port with its own config and storage, plain, with htpasswd, with TLS, or behind a token server; the
servers of ``registry_fakes.py``; certificates made with openssl. Every process is started here and
stopped by its pid."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import platform
import select
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from helpers import REPO, stop_process, strata

FAKES = os.path.join(REPO, "tests", "registry_fakes.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    pid: int
    host: str  # host:port
    log: str | None = None
    data: str = ""

    def events(self, kind: str | None = None) -> list[dict]:
        if self.log is None or not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            events = [json.loads(line) for line in f if line.strip()]
        return [e for e in events if kind is None or e.get("event") == kind]


def _answers(url: str, context: ssl.SSLContext | None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1, context=context):
            return True
    except urllib.error.HTTPError:
        return True  # 401: up, and asking for credentials
    except OSError:
        return False


@contextlib.contextmanager
def registry(work: str, auth: str = "", tls: tuple[str, str] | None = None) -> Iterator[Server]:
    """docker-registry on a free port storing under ``work``; ``auth``: a YAML ``auth:`` block's
    body; ``tls``: (certificate, key)."""
    if shutil.which("docker-registry") is None:
        pytest.fail("docker-registry is required (make test installs it)")
    os.makedirs(work, exist_ok=True)
    port = free_port()
    data = os.path.join(work, "storage")
    config = os.path.join(work, "registry.yml")
    text = (
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {data}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: strata-test-secret\n"
    )
    if tls:
        text += f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n"
    if auth:
        text += "auth:\n" + "".join(f"  {line}\n" for line in auth.strip("\n").splitlines())
    with open(config, "w") as f:
        f.write(text)
    proc = subprocess.Popen(
        ["docker-registry", "serve", config],
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(work, "registry.log"), "w"),
    )
    context = ssl._create_unverified_context() if tls else None
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/v2/"
    try:
        deadline = time.monotonic() + 30
        while not _answers(url, context):  # ready once /v2/ answers
            assert proc.poll() is None, "docker-registry exited: " + open(os.path.join(work, "registry.log")).read()
            assert time.monotonic() < deadline, "docker-registry did not answer"
            time.sleep(0.05)
        yield Server(proc.pid, f"127.0.0.1:{port}", data=data)
    finally:
        stop_process(proc.pid)
        proc.wait()


@contextlib.contextmanager
def fake(mode: str, work: str, *args: str) -> Iterator[Server]:
    """One of ``registry_fakes.py``'s servers; its port is the first line it prints."""
    os.makedirs(work, exist_ok=True)
    log = os.path.join(work, f"{mode}-{len(os.listdir(work))}.log")
    proc = subprocess.Popen(
        [sys.executable, FAKES, mode, "--log", log, *args], stdout=subprocess.PIPE, stderr=open(log + ".err", "w")
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline().decode().strip() if ready else ""
        assert line.isdigit(), f"{mode} did not start: " + open(log + ".err").read()
        yield Server(proc.pid, f"127.0.0.1:{line}", log)
    finally:
        stop_process(proc.pid)
        proc.wait()


def openssl(*args: str, stdin: bytes | None = None) -> None:
    subprocess.run(["openssl", *args], input=stdin, check=True, capture_output=True)


def make_ca(work: str, names: list[str]) -> tuple[str, str, str]:
    """A CA, and a server certificate it signs for ``names`` (IPs or DNS names). Returns (ca.crt,
    server.crt, server.key)."""
    os.makedirs(work, exist_ok=True)
    ca_key, ca, key, csr, crt = (
        os.path.join(work, n) for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt")
    )
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        ca_key,
        "-out",
        ca,
        "-days",
        "2",
        "-subj",
        "/CN=strata test CA",
    )
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=registry")
    sans = ",".join(f"IP:{n}" if n[0].isdigit() else f"DNS:{n}" for n in names)
    ext = os.path.join(work, "ext.cnf")
    with open(ext, "w") as f:
        f.write(f"subjectAltName={sans}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    openssl(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        ca,
        "-CAkey",
        ca_key,
        "-CAcreateserial",
        "-out",
        crt,
        "-days",
        "2",
        "-extfile",
        ext,
    )
    return ca, crt, key


def signing_pair(work: str) -> tuple[str, str]:
    """A self-signed key and certificate for a token server: (cert, key)."""
    os.makedirs(work, exist_ok=True)
    cert, key = os.path.join(work, "token.crt"), os.path.join(work, "token.key")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        key,
        "-out",
        cert,
        "-days",
        "2",
        "-subj",
        "/CN=strata test token issuer",
    )
    return cert, key


def htpasswd(path: str, user: str, password: str) -> None:
    """A bcrypt entry (distribution reads no other), the password on stdin."""
    if shutil.which("htpasswd") is None:
        pytest.fail("htpasswd is required (apache2-utils; make test installs it)")
    flags = "-Bi" if os.path.exists(path) else "-cBi"
    subprocess.run(["htpasswd", flags, path, user], input=password.encode(), check=True, capture_output=True)


def host_arch() -> str:
    """This host's architecture as OCI platforms name it."""
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def put_index(host: str, repository: str, tag: str, images: dict[str, str]) -> bytes:
    """Put an OCI index under ``repository:tag`` in the plain-HTTP registry ``host`` naming, for each
    linux architecture in ``images``, the manifest the tag given for it names there (pushed before);
    the index's bytes."""
    manifests = []
    for arch, image_tag in images.items():
        get = urllib.request.Request(
            f"http://{host}/v2/{repository}/manifests/{image_tag}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        with urllib.request.urlopen(get) as resp:
            digest, size = resp.headers["Docker-Content-Digest"], len(resp.read())
        manifests.append(
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest,
                "size": size,
                "platform": {"os": "linux", "architecture": arch},
            }
        )
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}
    ).encode()
    put = urllib.request.Request(
        f"http://{host}/v2/{repository}/manifests/{tag}",
        data=index,
        method="PUT",
        headers={"Content-Type": "application/vnd.oci.image.index.v1+json"},
    )
    with urllib.request.urlopen(put) as resp:
        assert resp.status == 201
    return index


def image_id(root: str, ref: str) -> str:
    return str(json.loads(strata(root, "inspect", ref).out)[0]["Id"])


def store_files(root: str) -> list[str]:
    """Every file of a store but its lock files: compared before and after a command that must
    change nothing."""
    return sorted(
        os.path.relpath(os.path.join(d, f), root)
        for d, _, fs in os.walk(root)
        for f in fs
        if f not in ("lock", "gc.lock")
    )


def registry_blobs(data: str) -> dict[str, int]:
    """digest -> size of every blob a registry's storage holds."""
    out = {}
    for path in glob.glob(os.path.join(data, "docker/registry/v2/blobs/sha256/*/*/data")):
        out["sha256:" + os.path.basename(os.path.dirname(path))] = os.path.getsize(path)
    return out


def tree(path: str) -> dict[str, tuple]:
    """A directory as (type, mode, content or target) by relative path: two trees compare equal when a
    person would call them the same files."""
    out: dict[str, tuple] = {}
    for d, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(d, name)
            rel = os.path.relpath(full, path)
            st = os.lstat(full)
            if os.path.islink(full):
                out[rel] = ("link", os.readlink(full))
            elif os.path.isdir(full):
                out[rel] = ("dir", st.st_mode & 0o7777)
            else:
                with open(full, "rb") as f:
                    out[rel] = ("file", st.st_mode & 0o7777, f.read())
    return out
