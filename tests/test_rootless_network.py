"""Rootless container networks (issue 19): pasta connects the container's namespace, as rootless
podman's; ``-p`` publishes on the host (pasta binds the port), the container reaches what the host
serves on its loopback (``host.containers.internal``), pasta ends with the container and with a
killed supervisor, bad values are one line. Each test runs strata as the session's throwaway user
(the ``rootless`` fixture) and removes its containers; the host servers are the test's own threads."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import urllib.request

import pytest
from helpers import wait_for
from rootless_support import mounts_below

SERVE = "mkdir -p /www && echo hello from {name} > /www/index.html && exec httpd -f -p 80 -h /www"


@pytest.fixture
def store(rootless, request):
    """The user's store (in its home), with a whole busybox imported as bb:latest; its containers
    removed after the test."""
    scratch = rootless.make_dir(os.path.join(rootless.home, f"n-{request.node.name}"[:80]))
    rootfs = os.path.join(scratch, "rootfs")
    for d in ("bin", "etc", "tmp"):
        os.makedirs(os.path.join(rootfs, d))
    busybox = shutil.which("busybox")
    assert busybox is not None, "busybox-static is required (make test installs it)"
    shutil.copy(busybox, os.path.join(rootfs, "bin", "busybox"))
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    with open(os.path.join(rootfs, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    rootless.give(scratch)
    root = os.path.join(scratch, "store")
    rootless.strata(root, "import", rootfs, "bb:latest", "--change", 'CMD ["/bin/sh"]')
    yield root
    ids = rootless.strata(root, "ps", "-aq", check=False).out.split()
    if ids:
        rootless.strata(root, "rm", "-f", *ids, check=False)
    if not mounts_below([scratch]):
        shutil.rmtree(scratch, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.read())
    except OSError:
        return False


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def pasta_of(rootless, root: str, name: str) -> int:
    cid = rootless.strata(root, "inspect", "-f", "{{.Id}}", name).out.strip()
    with open(os.path.join(root, "containers", cid, "state.json")) as f:
        return int(json.load(f)["Network"]["PastaPid"])


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_rootless_p_publishes_a_containers_httpd_on_the_host(rootless, store):
    port = free_port()
    rootless.strata(store, "run", "-d", "--name", "web", "-p", f"{port}:80", "bb", "sh", "-c", SERVE.format(name="web"))
    wait_for(lambda: answers(f"http://127.0.0.1:{port}/"), what="httpd through pasta")
    assert fetch(f"http://127.0.0.1:{port}/") == "hello from web\n"
    assert rootless.strata(store, "port", "web").out == f"80/tcp -> 0.0.0.0:{port}\n"
    assert f"0.0.0.0:{port}->80/tcp" in rootless.strata(store, "ps").out
    doc = json.loads(rootless.strata(store, "inspect", "web").out)[0]
    net = doc["NetworkSettings"]
    assert net["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]} and net["IPAddress"]
    pasta = pasta_of(rootless, store, "web")
    assert alive(pasta) and rootless.owns(pasta)
    rootless.strata(store, "rm", "-f", "web")
    assert not alive(pasta) and not answers(f"http://127.0.0.1:{port}/")  # pasta ends with the container
    socket.create_server(("0.0.0.0", port)).close()  # and so its port is free


def test_rootless_container_reaches_the_hosts_loopback_services(rootless, store):
    """A server bound to the host's 127.0.0.1 (this test's thread) answers the container at
    host.containers.internal: pasta's gateway address stands for the host's loopback."""

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = b"hello from the host\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        out = rootless.strata(
            store,
            "run",
            "--rm",
            "bb",
            "sh",
            "-c",
            f"grep host.containers.internal /etc/hosts; cat /etc/resolv.conf; "
            f"wget -qO- http://host.containers.internal:{port}/",
        ).out.splitlines()
        assert out[0].endswith("\thost.containers.internal") and out[1] == "nameserver 169.254.1.1"
        assert out[-1] == "hello from the host"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_rootless_pasta_dies_with_a_killed_supervisor(rootless, store):
    port = free_port()
    rootless.strata(store, "run", "-d", "--name", "web", "-p", f"{port}:80", "bb", "sh", "-c", SERVE.format(name="w"))
    wait_for(lambda: answers(f"http://127.0.0.1:{port}/"), what="httpd through pasta")
    pasta = pasta_of(rootless, store, "web")
    cid = rootless.strata(store, "inspect", "-f", "{{.Id}}", "web").out.strip()
    with open(os.path.join(store, "containers", cid, "state.json")) as f:
        os.kill(json.load(f)["SupervisorPid"], signal.SIGKILL)
    wait_for(lambda: not alive(pasta), what="pasta to die with its supervisor")  # its parent-death signal
    wait_for(lambda: "Exited (255)" in rootless.strata(store, "ps", "-a").out, what="the container to be seen dead")
    socket.create_server(("0.0.0.0", port)).close()  # nothing holds the published port
    rootless.strata(store, "rm", "web")


def test_rootless_bad_network_values_are_one_line(rootless, store):
    with socket.create_server(("0.0.0.0", 0)) as taken:
        port = taken.getsockname()[1]
        res = rootless.strata(store, "run", "-d", "-p", f"{port}:80", "bb", "sleep", "60", check=False)
    assert res.code == 125 and res.err.count("\n") == 1 and "port is already allocated" in res.err
    res = rootless.strata(store, "run", "-p", "80", "--network", "mine", "bb", "true", check=False)
    assert (res.code, res.err) == (125, "Error: network mine not found\n")
    res = rootless.strata(store, "network", "create", "mine", check=False)
    assert res.code == 1 and "user networks need root" in res.err
    res = rootless.strata(store, "run", "-p", "80:80", "bb", "true", check=False)  # a privileged port
    assert res.code == 125 and res.err.count("\n") == 1 and "80" in res.err
    assert rootless.strata(store, "ps", "-aq").out == ""
