"""Container networks as root (issue 19): the default bridge, published ports served to the host
by a real httpd, user networks whose containers reach each other by name, NAT to the outside (a
network namespace of the test's own stands for it), the other modes, bad values, and what a killed
supervisor leaves (``rm`` cleans it). Every test removes what it made: containers (``rootdir``),
networks (by name), the outside namespace, its veth and server (by name and pid)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from helpers import strata, wait_for

from runner.net import etc, ports
from runner.net.leases import all_leases
from runner.net.netlink import Netlink
from runner.net.nft import Nft, port_elements

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="bridges and nftables need root (rootless: tests/test_rootless_network.py)"
)
SERVE = "mkdir -p /www && echo hello from {name} > /www/index.html && exec httpd -f -p 80 -h /www"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def fetch(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return str(r.read().decode())


def answers(url: str) -> bool:
    try:
        fetch(url, timeout=2)
        return True
    except (urllib.error.URLError, OSError):
        return False


def serve(root: str, name: str, *flags: str) -> dict:
    """A container running busybox httpd on port 80; its inspect document once it answers."""
    strata(root, "run", "-d", "--name", name, *flags, "bb", "sh", "-c", SERVE.format(name=name))
    doc = json.loads(strata(root, "inspect", name).out)[0]
    ip = doc["NetworkSettings"]["IPAddress"]
    if ip:
        wait_for(lambda: answers(f"http://{ip}/"), what=f"httpd in {name}")
    return doc


def leases_of(root: str) -> list:
    return [lease for lease in all_leases() if lease.container.startswith(os.path.join(root, "containers") + "/")]


def elements_to(ip: str) -> list:
    with Nft() as nft:
        return [e for e in port_elements(nft.table()) if e.ip == ip]


def link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


@pytest.fixture
def network(rootdir):
    """A user network of this test's (removed after it)."""
    name = f"t-{secrets.token_hex(4)}"
    strata(rootdir, "network", "create", name)
    yield name
    for cid in strata(rootdir, "ps", "-aq", "--no-trunc").out.split():
        strata(rootdir, "rm", "-f", cid, check=False)
    strata(rootdir, "network", "rm", name, check=False)


def test_a_published_port_serves_a_containers_httpd_to_the_host(rootdir):
    port = free_port()
    doc = serve(rootdir, "web", "-p", f"{port}:80")
    cid, ip = doc["Id"], doc["NetworkSettings"]["IPAddress"]
    assert fetch(f"http://127.0.0.1:{port}/") == "hello from web\n"  # loopback: the output hook's DNAT
    assert fetch(f"http://10.66.0.1:{port}/") == "hello from web\n"  # another of the host's addresses
    # another container reaches it through the host (hairpin), as a client elsewhere would
    out = strata(rootdir, "run", "--rm", "bb", "wget", "-qO-", f"http://10.66.0.1:{port}/").out
    assert out == "hello from web\n"
    row = strata(rootdir, "ps").out.splitlines()[1]
    assert f"0.0.0.0:{port}->80/tcp" in row
    assert strata(rootdir, "port", "web").out == f"80/tcp -> 0.0.0.0:{port}\n"
    assert strata(rootdir, "port", "web", "80").out == f"0.0.0.0:{port}\n"
    net = doc["NetworkSettings"]
    assert net["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]}
    assert doc["HostConfig"]["PortBindings"] == {"80/tcp": [{"HostIp": "", "HostPort": str(port)}]}
    assert net["Networks"]["bridge"]["IPAddress"] == ip and ip.startswith("10.66.")
    veth = f"veth{cid[:11]}"
    assert link_exists(veth) and [e.host_port for e in elements_to(ip)] == [port]
    with pytest.raises(OSError):  # the supervisor holds the host port: nothing else can take it
        socket.create_server(("0.0.0.0", port)).close()
    strata(rootdir, "rm", "-f", "web")
    # everything the start made is gone with the container (the veth off the bridge at once, and
    # deleted by the kernel with the namespace)
    assert elements_to(ip) == [] and leases_of(rootdir) == []
    wait_for(lambda: not link_exists(veth), timeout=5, what="the kernel to delete the veth with the namespace")
    socket.create_server(("0.0.0.0", port)).close()  # and the port is free again


def test_p_ctr_takes_a_free_port_and_an_address_binds_only_there(rootdir):
    doc = serve(rootdir, "web", "-p", "127.0.0.1::80", "-p", "80")
    published = doc["NetworkSettings"]["Ports"]["80/tcp"]
    assert sorted(p["HostIp"] for p in published) == ["0.0.0.0", "127.0.0.1"]
    local = next(int(p["HostPort"]) for p in published if p["HostIp"] == "127.0.0.1")
    anywhere = next(int(p["HostPort"]) for p in published if p["HostIp"] == "0.0.0.0")
    assert local != anywhere and min(local, anywhere) > 1024
    assert fetch(f"http://127.0.0.1:{local}/") == fetch(f"http://10.66.0.1:{anywhere}/") == "hello from web\n"
    assert not answers(f"http://10.66.0.1:{local}/")  # published on 127.0.0.1 only
    lines = strata(rootdir, "port", "web").out.splitlines()
    assert sorted(lines) == sorted([f"80/tcp -> 0.0.0.0:{anywhere}", f"80/tcp -> 127.0.0.1:{local}"])


def test_publish_all_publishes_what_the_image_exposes(rootdir, full_busybox):
    strata(rootdir, "import", full_busybox, "web:1", "--change", 'CMD ["/bin/sh"]', "--change", "EXPOSE 80 8080/udp")
    strata(rootdir, "run", "-d", "--name", "plain", "web:1", "sleep", "300")
    assert "80/tcp, 8080/udp" in strata(rootdir, "ps").out.splitlines()[1]  # exposed, not published
    strata(rootdir, "run", "-d", "--name", "all", "-P", "web:1", "sh", "-c", SERVE.format(name="all"))
    doc = json.loads(strata(rootdir, "inspect", "all").out)[0]
    assert doc["Config"]["ExposedPorts"] == {"80/tcp": {}, "8080/udp": {}}
    ports_ = doc["NetworkSettings"]["Ports"]
    assert set(ports_) == {"80/tcp", "8080/udp"} and all(len(v) == 1 for v in ports_.values())
    host_port = ports_["80/tcp"][0]["HostPort"]
    wait_for(lambda: answers(f"http://127.0.0.1:{host_port}/"), what="httpd through -P")
    assert fetch(f"http://127.0.0.1:{host_port}/") == "hello from all\n"


def test_containers_on_a_user_network_reach_each_other_by_name(rootdir, network):
    web = serve(rootdir, "web", "--network", network)
    client = strata(
        rootdir,
        "run",
        "--name",
        "client",
        "--network",
        network,
        "bb",
        "sh",
        "-c",
        "wget -qO- http://web/ && grep -w web /etc/hosts",
    ).out.splitlines()
    ip = web["NetworkSettings"]["IPAddress"]
    assert client == ["hello from web", f"{ip}\tweb {web['Id'][:12]}"]
    assert web["NetworkSettings"]["Networks"][network]["IPAddress"] == ip
    (doc,) = json.loads(strata(rootdir, "network", "inspect", network).out)
    subnet = doc["IPAM"]["Config"][0]["Subnet"]
    assert doc["Driver"] == "bridge" and [c["Name"] for c in doc["Containers"].values()] == ["web"]
    assert doc["Containers"][web["Id"]]["IPv4Address"] == f"{ip}/{subnet.split('/')[1]}"
    # another network cannot reach it, even through the host: the isolation chain drops it
    out = strata(rootdir, "run", "--rm", "bb", "sh", "-c", f"nc -w 2 {ip} 80 </dev/null; echo rc=$?").out
    assert out.strip().endswith("rc=1")
    res = strata(rootdir, "network", "rm", network, check=False)
    assert res.code == 1 and "has active endpoints" in res.err
    bridge = doc["Options"]["com.docker.network.bridge.name"]
    strata(rootdir, "rm", "-f", "web", "client")
    assert strata(rootdir, "network", "rm", network).out == f"{network}\n"
    assert not link_exists(bridge)
    with Nft() as nft:
        assert not [o for o in nft.table() if bridge.replace("-", "_") in json.dumps(o)]


def test_outbound_traffic_leaves_through_the_host_masqueraded(rootdir):
    """An 'outside' of the test's own: a namespace behind a veth pair, a server there that says
    who connected. The container's connection arrives from the host's address, not its own."""
    tag = secrets.token_hex(3)
    ns, host_end, far_end = f"strata-t{tag}", f"sto{tag}", f"sti{tag}"
    server = None
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(
            ["ip", "link", "add", host_end, "type", "veth", "peer", "name", far_end, "netns", ns], check=True
        )
        subprocess.run(["ip", "addr", "add", "198.51.100.1/30", "dev", host_end], check=True)
        subprocess.run(["ip", "link", "set", host_end, "up"], check=True)
        for cmd in (
            ["ip", "addr", "add", "198.51.100.2/30", "dev", far_end],
            ["ip", "link", "set", far_end, "up"],
            ["ip", "link", "set", "lo", "up"],
        ):
            subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True)
        code = (
            "import socket,sys; s=socket.create_server(('198.51.100.2', 8080)); print('ready', flush=True); "
            "c, a = s.accept(); c.sendall(b'you are ' + a[0].encode() + b'\\n'); c.close(); print(a[0])"
        )
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
        )
        assert server.stdout is not None and server.stdout.readline() == "ready\n"
        out = strata(rootdir, "run", "--rm", "bb", "sh", "-c", "ip -o -4 addr show eth0; nc 198.51.100.2 8080").out
        assert " 10.66." in out.splitlines()[0] and out.splitlines()[1] == "you are 198.51.100.1"
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_none_host_and_another_containers_namespace(rootdir):
    assert strata(rootdir, "run", "--rm", "--network", "none", "bb", "ip", "-o", "link").out.count("\n") == 1
    host = strata(rootdir, "run", "--rm", "--network", "host", "bb", "cat", "/sys/class/net/strata0/address").out
    with open("/sys/class/net/strata0/address") as f:
        assert host == f.read()
    res = strata(rootdir, "run", "--rm", "--network", "host", "-p", "80:80", "bb", "true")
    assert "Published ports are discarded when using host network mode" in res.err
    web = serve(rootdir, "web")
    ip = web["NetworkSettings"]["IPAddress"]
    out = strata(
        rootdir,
        "run",
        "--rm",
        "--network",
        "container:web",
        "bb",
        "sh",
        "-c",
        "ip -o -4 addr show eth0; wget -qO- http://127.0.0.1/",
    ).out.splitlines()
    assert f" {ip}/16 " in out[0] and out[1] == "hello from web"  # its namespace: its address, its loopback
    res = strata(rootdir, "run", "--network", "container:web", "-p", "80", "bb", "true", check=False)
    assert (res.code, res.err) == (
        125,
        "Error: conflicting options: port publishing and the container type network mode\n",
    )
    strata(rootdir, "run", "-d", "--name", "joiner", "--network", "container:web", "bb", "sleep", "300")
    strata(rootdir, "stop", "-t", "0", "web")
    # the namespace lives on in the joiner, without web's endpoint (its address may go to another)
    assert strata(rootdir, "exec", "joiner", "ip", "-o", "link").out.count("\n") == 1
    assert not link_exists(f"veth{web['Id'][:11]}") and leases_of(rootdir) == []
    res = strata(rootdir, "run", "--network", "container:web", "bb", "true", check=False)
    assert res.code == 125 and "it is not running" in res.err


def test_a_veth_gone_between_lookup_and_detach_is_not_an_error():
    """A container's namespace can die (and take its veth pair along) between the lookup of the
    veth's index and the request that takes it off the bridge: the end of a run must not report it."""
    name = f"stt{secrets.token_hex(4)}"
    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", name + "p"], check=True)
    with Netlink.here() as nl:
        try:
            stale = nl.index(name)
        finally:
            nl.delete(name)
        nl.index = lambda _name: stale  # type: ignore[method-assign]
        assert nl.detach(name) is False
    assert not link_exists(name)


def test_hosts_and_resolv_conf_are_written_for_the_container(rootdir):
    out = strata(
        rootdir,
        "run",
        "--rm",
        "--hostname",
        "box",
        "bb",
        "sh",
        "-c",
        "cat /etc/hosts; echo --; cat /etc/resolv.conf; echo --; ip -o -4 addr show eth0",
    ).out
    hosts, resolv, addr = out.split("--\n")
    ip = addr.split()[3].split("/")[0]
    assert f"{ip}\tbox\n" in hosts and "10.66.0.1\thost.containers.internal\n" in hosts
    assert resolv == etc.resolv_for_bridge(etc.host_resolv())


def test_resolv_conf_leaves_loopback_resolvers_out():
    text = "search example.org\nnameserver 127.0.0.53\nnameserver ::1\noptions edns0\n"
    assert etc.resolv_for_bridge(text) == "search example.org\noptions edns0\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n"
    assert etc.resolv_for_bridge("nameserver 192.0.2.53\n") == "nameserver 192.0.2.53\n"


def test_p_specs_parse_as_dockers_cli_reads_them():
    assert ports.bindings(["8080:80", "127.0.0.1:53:53/udp", "9000-9001:90-91", "7000", "1.2.3.4::22"]) == {
        "80/tcp": [{"HostIp": "", "HostPort": "8080"}],
        "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "53"}],
        "90/tcp": [{"HostIp": "", "HostPort": "9000"}],
        "91/tcp": [{"HostIp": "", "HostPort": "9001"}],
        "7000/tcp": [{"HostIp": "", "HostPort": ""}],
        "22/tcp": [{"HostIp": "1.2.3.4", "HostPort": ""}],
    }
    ps = {
        "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}],
        "81/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8081"}],
        "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "5353"}],
        "443/tcp": None,
    }
    assert ports.ps_column(ps) == "127.0.0.1:5353->53/udp, 0.0.0.0:8080-8081->80-81/tcp, 443/tcp"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("80:abc", "invalid containerPort: abc"),
        ("x:80", "invalid hostPort: x"),
        ("70000:80", "invalid hostPort: 70000"),
        ("80/sctpx", "invalid proto: sctpx"),
        ("300.1.1.1:80:80", "invalid IP address: 300.1.1.1"),
        ("8000-8002:80-81", "invalid ranges specified for container and host Ports: 80-81 and 8000-8002"),
        ("[::1]:80:80", "IPv6 host addresses are not supported"),
        ("80:", "no port specified: 80:<empty>"),
    ],
)
def test_a_bad_p_spec_is_one_line_and_creates_nothing(rootdir, spec, message):
    res = strata(rootdir, "run", "-p", spec, "bb", "true", check=False)
    assert res.code == 125 and res.err.count("\n") == 1 and message in res.err
    assert strata(rootdir, "ps", "-aq").out == ""


def test_an_unknown_network_or_a_port_in_use_leaves_nothing_behind(rootdir):
    res = strata(rootdir, "run", "--network", "nope", "bb", "true", check=False)
    assert (res.code, res.err) == (125, "Error: network nope not found\n")
    with socket.create_server(("0.0.0.0", 0)) as taken:  # a host program's port
        port = taken.getsockname()[1]
        res = strata(rootdir, "run", "-d", "-p", f"{port}:80", "bb", "sleep", "300", check=False)
    assert res.code == 125 and res.err.count("\n") == 1
    assert f"Bind for 0.0.0.0:{port} failed: port is already allocated" in res.err
    assert strata(rootdir, "ps", "-aq").out == "" and leases_of(rootdir) == []
    with Nft() as nft:
        assert [e for e in port_elements(nft.table()) if e.host_port == port] == []
    # a port another container publishes: refused too, the first one unharmed
    port = free_port()
    serve(rootdir, "first", "-p", f"{port}:80")
    res = strata(rootdir, "run", "-d", "--name", "second", "-p", f"{port}:80", "bb", "sleep", "300", check=False)
    assert res.code == 125 and "port is already allocated" in res.err
    assert strata(rootdir, "ps", "-aq").out.count("\n") == 1 and len(leases_of(rootdir)) == 1
    assert fetch(f"http://127.0.0.1:{port}/") == "hello from first\n"


def test_network_prune_and_system_prune_remove_the_networks_no_running_container_is_on(rootdir):
    names = [f"t-{secrets.token_hex(4)}" for _ in range(3)]
    busy, labelled, idle = names
    try:
        ids = [
            strata(rootdir, "network", "create", *(["--label", "tier=x"] if n == labelled else []), n).out.strip()
            for n in names
        ]
        strata(rootdir, "run", "-d", "--name", "on-busy", "--network", busy, "bb", "sleep", "300")
        res = strata(rootdir, "network", "prune", input=b"n\n")
        assert res.out.startswith("WARNING! This will remove all custom networks not used by at least one container.")
        assert (
            strata(rootdir, "network", "prune", "-f", "--filter", "label=tier=x").out
            == f"Deleted Networks:\n{labelled}\n\n"
        )
        assert not link_exists(f"br-{ids[1][:12]}") and link_exists(f"br-{ids[2][:12]}")
        out = strata(rootdir, "system", "prune", "-f").out
        assert "  - all networks not used by at least one container\n" not in out  # (-f: no warning)
        assert f"Deleted Networks:\n{idle}\n" in out and busy not in out
        assert not link_exists(f"br-{ids[2][:12]}") and link_exists(f"br-{ids[0][:12]}")
        listed = strata(rootdir, "network", "ls", "--format", "json").out
        assert busy in listed and idle not in listed and labelled not in listed
    finally:
        strata(rootdir, "rm", "-f", "on-busy", check=False)
        for name in names:
            strata(rootdir, "network", "rm", name, check=False)


def test_network_create_and_rm_refuse_bad_values(rootdir, network):
    for args, message in (
        (["create", network], f"network with name {network} already exists"),
        (["create", "--subnet", "10.66.1.0/24", "x1"], "overlaps 10.66.0.0/16"),
        (["create", "--subnet", "nonsense", "x2"], "invalid subnet nonsense"),
        (
            ["create", "--subnet", "10.200.9.0/24", "--gateway", "10.1.1.1", "x3"],
            "no matching subnet for gateway 10.1.1.1",
        ),
        (["rm", "bridge"], "bridge is a pre-defined network and cannot be removed"),
        (["inspect", "nope"], "network nope not found"),
    ):
        res = strata(rootdir, "network", *args, check=False)
        assert res.code == 1 and message in res.err and res.err.count("\n") == 1, args
    names = [line.split()[1] for line in strata(rootdir, "network", "ls").out.splitlines()[1:]]
    assert names == sorted(["bridge", "host", "none", network])


def test_what_a_killed_supervisor_left_is_reported_and_rm_cleans_it(rootdir):
    port = free_port()
    doc = serve(rootdir, "web", "-p", f"{port}:80")
    ip = doc["NetworkSettings"]["IPAddress"]
    with open(os.path.join(rootdir, "containers", doc["Id"], "state.json")) as f:
        supervisor = json.load(f)["SupervisorPid"]
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: "Exited (255)" in strata(rootdir, "ps", "-a").out, what="the container to be seen dead")
    # PID 1 died with it, and its namespace and eth0 with it; its element and lease are left over
    wait_for(lambda: not link_exists(f"veth{doc['Id'][:11]}"), what="the kernel to take the veth")
    assert [e.host_port for e in elements_to(ip)] == [port] and len(leases_of(rootdir)) == 1
    assert f"leftover network endpoint of container web ({doc['Id'][:12]})" in strata(rootdir, "system", "check").out
    strata(rootdir, "rm", "web")
    assert elements_to(ip) == [] and leases_of(rootdir) == []
    assert f"container web ({doc['Id'][:12]})" not in strata(rootdir, "system", "check").out
    with contextlib.closing(socket.create_server(("0.0.0.0", port))):
        pass


def test_a_stores_check_reports_its_own_leftovers_and_reclaims_those_of_a_store_gone(rootdir, tmp_path):
    """Leases are host-wide, but another store's dead endpoint is not this store's problem; one whose
    store was deleted (nobody can `strata rm` it any more) is reclaimed by the next check."""
    doc = serve(rootdir, "web")
    ip = doc["NetworkSettings"]["IPAddress"]
    with open(os.path.join(rootdir, "containers", doc["Id"], "state.json")) as f:
        os.kill(json.load(f)["SupervisorPid"], signal.SIGKILL)
    wait_for(lambda: "Exited (255)" in strata(rootdir, "ps", "-a").out, what="the container to be seen dead")
    other = str(tmp_path / "other-store")
    assert strata(other, "system", "check").out.strip() == "store is consistent"
    assert len(leases_of(rootdir)) == 1  # reported by its own store only, and left to it
    assert f"container web ({doc['Id'][:12]})" in strata(rootdir, "system", "check").out
    shutil.rmtree(os.path.join(rootdir, "containers", doc["Id"]))  # (its union is gone: PID 1 died)
    try:
        assert strata(other, "system", "check").out.strip() == "store is consistent"
        assert leases_of(rootdir) == [] and elements_to(ip) == []
    finally:  # its cgroups, which its killed supervisor did not remove and no store knows of now
        groups = glob.glob(f"/sys/fs/cgroup/*/strata/{doc['Id']}") + glob.glob(f"/sys/fs/cgroup/strata/{doc['Id']}")
        for group in groups:
            wait_for(lambda g=group: _empty_group(g), what=f"{group} to empty")  # (PID 1 dies with its supervisor)
            os.rmdir(group)


def _empty_group(path: str) -> bool:
    with open(os.path.join(path, "cgroup.procs")) as f:
        return not f.read().strip()


def test_the_network_lock_makes_run_strata_as_private_as_the_zygote_wants_it(tmp_path, monkeypatch):
    """/run/strata is root's zygote directory too: made 0755 (makedirs' parents), the zygote would refuse it."""
    from runner.net import leases

    monkeypatch.setattr(leases, "RUN_DIR", str(tmp_path / "strata" / "net"))
    with leases.locked():
        pass
    assert [os.stat(d).st_mode & 0o777 for d in (tmp_path / "strata", tmp_path / "strata" / "net")] == [0o700, 0o700]
