"""Small servers the registry tests put around Debian's docker-registry, each its own process:

  token   a token server for the registry's ``auth: token`` config: users, scopes granted by rule,
          RS256 JWTs whose ``x5c`` is the certificate in the registry's ``rootcertbundle``
  proxy   a reverse proxy in front of a registry (optionally as slow as a WAN link) that can drop the connection half-way through a
          blob (a GET's response or a PATCH/PUT's body, which it reads whole before forwarding, as
          nginx does), refuse everything after that, ignore a blob GET's Range (the whole blob
          again, as a server without ranges answers), flip a byte of a blob, redirect blob GETs to
          ``cdn``, strip the Authorization of one blob GET (a token the registry refuses), and hold
          blob GETs until N are in flight at once (proof of parallel downloads)
  cdn     serves blobs from a registry's storage directory, as a CDN a registry redirects to
  connect a forward proxy (CONNECT tunnels, absolute-URI requests) that maps made-up host names to
          loopback ports: a name only the proxy can resolve proves the client went through it

``python tests/registry_fakes.py MODE --log FILE [options]`` binds 127.0.0.1 on a free port and
prints it on stdout once it listens; every request it sees is a JSON line in FILE. Stopped by pid.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BLOB_GET = re.compile(r"^/v2/(.+)/blobs/(sha256:[0-9a-f]{64})$")
UPLOAD = re.compile(r"^/v2/(.+)/blobs/uploads/")
HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


class Log:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def __call__(self, **event: object) -> None:
        os.write(self.fd, (json.dumps(event) + "\n").encode())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- token server ---------------------------------------------------------------------------------
def token_handler(args: argparse.Namespace, log: Log) -> type[BaseHTTPRequestHandler]:
    users = {}
    for entry in args.users.split(",") if args.users else []:
        name, password, actions = entry.split(":")
        users[name] = (password, actions.split("+"))
    with open(args.cert) as f:
        der = base64.b64decode("".join(line for line in f.read().splitlines() if "-----" not in line))

    def sign(data: bytes) -> bytes:
        return subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", args.key], input=data, check=True, capture_output=True
        ).stdout

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def do_GET(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(parts.query)
            user, actions = "", ["pull"] if args.anonymous_pull else []
            header = self.headers.get("Authorization", "")
            if header.startswith("Basic "):
                name, _, password = base64.b64decode(header[6:]).decode().partition(":")
                if name not in users or users[name][0] != password:
                    log(event="token", refused=True, account=query.get("account", [""])[0])
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                user, actions = name, users[name][1]
            scopes = query.get("scope", [])
            access = []
            for scope in scopes:
                kind, name, wanted = scope.split(":")
                anonymous_ok = not user and args.anonymous_pull and name.startswith(args.anonymous_pull)
                granted = [a for a in wanted.split(",") if a in actions and (user or anonymous_ok)]
                access.append({"type": kind, "name": name, "actions": granted})
            now = int(time.time())
            claims = {
                "iss": args.issuer,
                "sub": user,
                "aud": query.get("service", [""])[0],
                "exp": now + 600,
                "nbf": now - 10,
                "iat": now,
                "jti": uuid.uuid4().hex,
                "access": access,
            }
            head = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
            signing = f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(claims).encode())}"
            token = f"{signing}.{b64url(sign(signing.encode()))}"
            log(
                event="token",
                user=user,
                account=query.get("account", [""])[0],
                scopes=scopes,
                service=query.get("service", [""])[0],
                access=access,
                token=token[-16:],
            )
            body = json.dumps({"token": token, "expires_in": args.expires_in}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


# -- reverse proxy --------------------------------------------------------------------------------
class ProxyState:
    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.moved: dict[str, int] = {}  # blob bytes passed so far, by blob (a digest, an upload session)
        self.dropped = False
        self.stripped = False
        self.in_flight = 0


def proxy_handler(args: argparse.Namespace, log: Log) -> type[BaseHTTPRequestHandler]:
    upstream = urllib.parse.urlsplit(args.upstream)
    state = ProxyState()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: object) -> None:
            pass

        def _cut(self, reset: bool = True) -> None:
            """Drop the client's connection, no answer: reset (what it sent is lost), or closed after
            what we sent (so a test knows to the byte what arrived)."""
            if reset:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            else:
                self.connection.shutdown(socket.SHUT_WR)
            self.close_connection = True
            self.connection.close()

        def _room(self, key: str, n: int) -> int:
            """How many of the next ``n`` bytes of blob ``key`` may pass before the drop (once, the
            first blob to cross ``--drop-after`` bytes)."""
            with state.lock:
                moved = state.moved.get(key, 0)
                take = n if args.drop_after is None or state.dropped else min(n, max(0, args.drop_after - moved))
                state.moved[key] = moved + take
                state.dropped = state.dropped or take < n
                return take

        def _any(self) -> None:
            if state.dropped and args.then == "refuse":
                log(event="refused", method=self.command, path=self.path)
                self._cut()
                return
            path = urllib.parse.urlsplit(self.path).path
            length = int(self.headers.get("Content-Length") or 0)
            body = b""
            blob_body = self.command in ("PATCH", "PUT") and UPLOAD.match(path) is not None
            while len(body) < length:
                chunk = self.rfile.read(min(1 << 20, length - len(body)))
                if not chunk:
                    break
                if blob_body:
                    room = self._room(path.rsplit("/", 1)[-1], len(chunk))
                    if room < len(chunk):
                        log(event="drop", method=self.command, path=path, sent=len(body) + room)
                        self._cut()
                        return
                body += chunk
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
            blob = BLOB_GET.match(path) if self.command == "GET" else None
            auth = "Authorization" in headers
            if blob and args.redirect_to:
                log(event="redirect", path=path, auth=auth)
                self.send_response(307)
                self.send_header("Location", f"{args.redirect_to}/blobs/{blob[2]}?sig=x")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if blob and args.no_range and headers.pop("Range", None) is not None:
                log(event="range-dropped", path=path)  # the registry answers with the whole blob
            if blob and auth and args.strip_auth_once and not state.stripped:
                state.stripped = True
                del headers["Authorization"]
                log(event="stripped", path=path)
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
            conn.request(self.command, self.path, body=body if length else None, headers=headers)
            resp = conn.getresponse()
            if blob and args.barrier and int(resp.getheader("Content-Length") or 0) >= args.barrier_min:
                self._barrier(path)
            whole = None if resp.getheader("Content-Length") or self.command == "HEAD" else resp.read()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in HOP:
                    self.send_header(k, v)
            if whole is not None:
                self.send_header("Content-Length", str(len(whole)))
            self.end_headers()
            if whole is not None:
                self.wfile.write(whole)
            sent = 0
            flipped = False
            began = time.monotonic()
            while self.command != "HEAD" and (chunk := resp.read(1 << 16)):
                if blob and resp.status in (200, 206):
                    if args.corrupt and not flipped and len(chunk) > 1000:
                        chunk = chunk[:500] + bytes([chunk[500] ^ 0xFF]) + chunk[501:]
                        flipped = True
                    room = self._room(blob[2], len(chunk))
                    if room < len(chunk):
                        self.wfile.write(chunk[:room])
                        self.wfile.flush()
                        log(event="drop", method="GET", path=path, sent=sent + room, range=headers.get("Range"))
                        self._cut(reset=False)
                        conn.close()
                        return
                self.wfile.write(chunk)
                sent += len(chunk)
                if blob and args.rate:  # a link of that many bytes a second, per connection
                    time.sleep(max(0.0, began + sent / args.rate - time.monotonic()))
            conn.close()
            log(
                event="request",
                method=self.command,
                path=path,
                query=urllib.parse.urlsplit(self.path).query,
                status=resp.status,
                auth=auth,
                body_in=len(body),
                body_out=sent,
                range=headers.get("Range"),
                content_range=self.headers.get("Content-Range"),
            )

        def _barrier(self, path: str) -> None:
            with state.lock:
                state.in_flight += 1
                state.lock.notify_all()
                met = state.lock.wait_for(lambda: state.in_flight >= args.barrier, timeout=30)
            log(event="barrier", path=path, met=met)

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any

    return Handler


# -- cdn ------------------------------------------------------------------------------------------
def cdn_handler(args: argparse.Namespace, log: Log) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def do_GET(self) -> None:
            m = re.match(r"^/blobs/sha256:([0-9a-f]{64})", self.path)
            auth = "Authorization" in self.headers
            path = os.path.join(args.storage, "docker/registry/v2/blobs/sha256", m[1][:2], m[1], "data") if m else ""
            log(event="cdn", path=self.path, auth=auth, range=self.headers.get("Range"))
            if not m or not os.path.exists(path):
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            with open(path, "rb") as f:
                data = f.read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


# -- forward proxy --------------------------------------------------------------------------------
def connect_handler(args: argparse.Namespace, log: Log) -> type[BaseHTTPRequestHandler]:
    mapping = dict(m.split("=", 1) for m in args.map)

    def target(netloc: str) -> tuple[str, int]:
        host, _, port = mapping.get(netloc, netloc).rpartition(":")
        return host, int(port)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def do_CONNECT(self) -> None:
            log(event="connect", target=self.path)
            try:
                upstream = socket.create_connection(target(self.path), timeout=10)
            except OSError:
                self.send_error(502)
                return
            self.send_response(200, "Connection established")
            self.end_headers()
            ends = [self.connection, upstream]
            while True:
                ready, _, _ = select.select(ends, [], [], 60)
                if not ready:
                    break
                for end in ready:
                    data = end.recv(1 << 16)
                    if not data:
                        upstream.close()
                        return
                    (upstream if end is self.connection else self.connection).sendall(data)

        def _forward(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            log(event="forward", method=self.command, url=self.path)
            host, port = target(parts.netloc)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            conn = http.client.HTTPConnection(host, port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
            conn.request(
                self.command, urllib.parse.urlunsplit(("", "", parts.path, parts.query, "")), body=body, headers=headers
            )
            resp = conn.getresponse()
            data = resp.read()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _forward

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["token", "proxy", "cdn", "connect"])
    parser.add_argument("--log", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="default: a free one")
    # token
    parser.add_argument("--key")
    parser.add_argument("--cert")
    parser.add_argument("--issuer", default="strata-test-issuer")
    parser.add_argument("--users", default="", help="name:password:pull+push,...")
    parser.add_argument("--anonymous-pull", default="", help="repositories with this prefix: pull for anyone")
    parser.add_argument("--expires-in", type=int, default=300)
    # proxy
    parser.add_argument("--upstream")
    parser.add_argument("--drop-after", type=int)
    parser.add_argument("--then", choices=["pass", "refuse"], default="pass")
    parser.add_argument("--corrupt", action="store_true")
    parser.add_argument("--redirect-to")
    parser.add_argument("--strip-auth-once", action="store_true")
    parser.add_argument("--no-range", action="store_true", help="drop blob GETs' Range: the whole blob comes again")
    parser.add_argument("--rate", type=float, default=0, help="blob bytes a second per connection (0: no limit)")
    parser.add_argument("--barrier", type=int, default=0, help="hold blob answers until this many are in flight")
    parser.add_argument("--barrier-min", type=int, default=10000, help="... of blobs at least this big")
    # cdn
    parser.add_argument("--storage")
    # connect
    parser.add_argument("--map", action="append", default=[], help="name:port=127.0.0.1:port")
    args = parser.parse_args()
    log = Log(args.log)
    handler = {"token": token_handler, "proxy": proxy_handler, "cdn": cdn_handler, "connect": connect_handler}[
        args.mode
    ](args, log)
    server = ThreadingHTTPServer((args.host, args.port), handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
