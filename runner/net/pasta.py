"""A rootless container's network: ``pasta`` (Debian's ``passt``) connects PID 1's namespace to the
host's, as rootless podman does (containers/common ``libnetwork/pasta``), with this argv::

    pasta --config-net -f --quiet --pid FIFO -t [IP/]HOST:CTR... -u ... [-t none] [-u none]
          -T none -U none --dns-forward 169.254.1.1 PID

``PID`` is PID 1's: pasta joins its user and network namespaces (the user owns the first, so it
may). The namespace gets the host's address and default gateway, as podman's; the gateway address
stands for the host's loopback (pasta's default; podman passes ``--no-map-gw`` unless told
``--map-gw``), so ``host.containers.internal`` reaches what the host serves on 127.0.0.1, and DNS
goes to the host's resolver through 169.254.1.1.

pasta runs in the foreground as the supervisor's child with SIGKILL as its parent-death signal:
it ends with the container, and with a killed supervisor (pasta does not end when the namespace
does). It says it is ready by writing its pid to ``--pid``, a FIFO here, after it configured the
namespace; an error before that is its exit and its stderr.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import struct
import tempfile
import time
from typing import Any

from .. import syscalls as sc
from .errors import NetworkError
from .ports import Published, Reservation

DNS_FORWARD = "169.254.1.1"
READY_TIMEOUT = 30.0  # seconds for pasta to configure the namespace


def default_route() -> tuple[str, str]:
    """(interface, gateway) of the host's IPv4 default route ('' if none)."""
    try:
        with open("/proc/net/route") as f:
            for row in f.read().splitlines()[1:]:
                fields = row.split()
                if len(fields) > 7 and fields[1] == "00000000" and fields[7] == "00000000":
                    return fields[0], socket.inet_ntoa(struct.pack("<I", int(fields[2], 16)))
    except OSError:
        pass
    return "", ""


def interface_address(name: str) -> str:
    SIOCGIFADDR = 0x8915
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            data = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return ""
    return socket.inet_ntoa(data[20:24])


def argv(pid: int, fifo: str, published: list[Published]) -> list[str]:
    args = ["pasta", "--config-net", "-f", "--quiet", "--pid", fifo]
    for proto, flag in (("tcp", "-t"), ("udp", "-u")):
        mine = [p for p in published if p.proto == proto]
        for p in mine:
            host = f"{p.host_ip}/" if p.host_ip not in ("", "0.0.0.0") else ""
            args += [flag, f"{host}{p.host_port}:{p.port}"]
        if not mine:
            args += [flag, "none"]
    return args + ["-T", "none", "-U", "none", "--dns-forward", DNS_FORWARD, str(pid)]


class PastaEndpoint:
    def __init__(self, reservation: Reservation) -> None:
        """``reservation``: the ports (a port in use is refused there; an empty host port gets a free
        one), let go at once: pasta binds them itself, and a process forked meanwhile (the union
        daemon) must not hold a copy of a socket when it does (pasta then binds IPv6 alone)."""
        reservation.close()
        self.reservation = reservation
        self.pid = 0
        iface, self.gateway = default_route()
        self.address = interface_address(iface) if iface else ""

    def connect(self, target: int) -> None:
        if shutil.which("pasta") is None:
            raise NetworkError(
                "rootless containers reach the network through pasta, which is not installed "
                "(Debian: apt-get install passt), or use --network none"
            )
        if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
            raise NetworkError(
                "pasta cannot open /dev/net/tun (Debian gives it mode 0666: chmod 0666 "
                "/dev/net/tun), or use --network none"
            )
        published = list(self.reservation.published)
        with tempfile.TemporaryDirectory(prefix="strata-pasta-") as tmp, tempfile.TemporaryFile() as err:
            fifo = os.path.join(tmp, "pid")
            os.mkfifo(fifo, 0o600)
            ready = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                self.pid = _spawn(argv(target, fifo, published), err.fileno())
                _wait_ready(self.pid, ready, err)
            except BaseException:
                self.disconnect()
                raise
            finally:
                os.close(ready)

    def disconnect(self) -> None:
        self.reservation.close()
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.pid = 0

    def record(self) -> dict[str, Any]:
        return {
            "Network": "pasta",
            "NetworkID": "",
            "Bridge": "",
            "IPAddress": self.address,
            "IPPrefixLen": 0,
            "Gateway": self.gateway,
            "MacAddress": "",
            "EndpointID": "",
            "PastaPid": self.pid,
        }


def _spawn(args: list[str], stderr: int) -> int:
    """Fork and exec pasta with SIGKILL as its parent-death signal (it outlives no supervisor)."""
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    try:
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(125)
        # Python ignores SIGPIPE and SIGXFSZ, and an exec keeps that; pasta of Debian 12 refuses to
        # start when it finds SIGPIPE ignored already ("Couldn't install signal handlers")
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(stderr, 2)
        os.execvp(args[0], args)
    finally:
        os._exit(127)


def _wait_ready(pid: int, fifo: int, err: Any) -> None:
    """Until pasta has written its pid into the FIFO and closed it, or has exited (an error: its
    stderr says which), bounded."""
    pidfd = os.pidfd_open(pid)
    data = b""
    deadline = time.monotonic() + READY_TIMEOUT
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NetworkError(f"pasta did not configure the container's network in {READY_TIMEOUT:.0f} s")
            readable, _, _ = select.select([fifo, pidfd], [], [], left)
            if fifo in readable:
                try:
                    chunk = os.read(fifo, 64)
                except BlockingIOError:
                    chunk = None
                data += chunk or b""
                if data.endswith(b"\n") or (chunk == b"" and data):  # its pid: the namespace is configured
                    return
            if pidfd in readable and not data:  # (the zombie is the caller's to reap)
                err.seek(0)
                lines = [
                    line
                    for line in err.read().decode(errors="replace").splitlines()
                    if line.strip() and "to syslog" not in line
                ]
                why = lines[-1].strip() if lines else "it exited"
                raise NetworkError(f"pasta could not connect the container: {why}")
    finally:
        os.close(pidfd)
