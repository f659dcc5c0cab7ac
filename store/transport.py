"""HTTP to one registry host: which scheme, which TLS roots, which proxy, retries and redirects.

urllib3 does the HTTP (pooled keep-alive connections shared by the transfer threads, timeouts,
retries with backoff on 5xx, 429 and connection resets for requests that may be repeated); this
module decides what it is given, and is the one place its errors (and ``ssl``'s and the socket's)
become a ``RegistryError`` line.

- Scheme: HTTPS, its certificate verified, unless ``tls_verify`` is false. Plain HTTP only for a
  loopback host or an insecure one (``tls_verify=False``), and only when the server does not speak
  TLS at all (the handshake fails for want of TLS, never for an untrusted certificate), as Docker
  tries an insecure registry. (A loopback host is asked in plain HTTP first: one that answers as a
  registry does not speak TLS there; ``probe`` sends a first request itself so, for ``Registry``.)
- TLS roots: the system's, plus ``*.crt`` of the registry's certs dir: ``cert_dir`` if given, else
  the first existing ``ROOT/HOST:PORT/`` of the certs.d roots (``$XDG_CONFIG_HOME/containers/certs.d``,
  ``/etc/containers/certs.d``, ``/etc/docker/certs.d``, as containers/image reads them; the
  ``STRATA_CERTS_D`` environment variable, a ``:``-separated list, replaces that list: the tests use
  it). ``client.cert`` + ``client.key`` pairs there are a client certificate.
- Proxies: ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` (either case), as curl reads them.
- Redirects (GET and HEAD only, up to 5): followed, and the ``Authorization`` header is dropped when
  the target is another origin (a CDN), as Docker and containers/image do.

Caveats: no credential helpers for proxies; ``registries.conf`` (mirrors, insecure lists) is not read.
"""

from __future__ import annotations

import functools
import glob
import ipaddress
import os
import ssl
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

import urllib3
from urllib3.exceptions import (
    HTTPError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.util.retry import Retry

from .errors import BadInput, Interrupted, RegistryError

CERTS_D_ENV = "STRATA_CERTS_D"
_TIMEOUT = urllib3.Timeout(connect=30, read=120)
_BLOCK = 1 << 20  # bytes per socket write of a request body (urllib3's 16 KiB costs CPU on big uploads)
_DRAIN = 64 << 10  # an unread rest of a response up to this is read to keep its connection (``GET /v2/``'s ``{}``)
_POOL = 8  # connections kept per host: the transfer threads' and a few more
_REDIRECTS = 5
# May be sent again: urllib3 retries these on connection resets, 5xx and 429 (with backoff); a request
# whose body streams from a file (an upload) is retried by its caller, which knows where to resume.
_IDEMPOTENT = Retry(
    total=4,
    connect=2,
    read=2,
    status=3,
    other=0,
    redirect=False,
    backoff_factor=0.25,
    status_forcelist=(429, 500, 502, 503, 504),
    allowed_methods=None,
    raise_on_status=False,
)
_PROBE = Retry(total=0, redirect=False, raise_on_status=False)  # a loopback registry's plain HTTP, tried once
_ONCE = Retry(total=2, connect=2, read=0, status=0, other=0, redirect=False, backoff_factor=0.25, raise_on_status=False)


@dataclass(frozen=True)
class TransportOptions:
    """How to reach registries. ``tls_verify``: None is the default (verify; plain HTTP for loopback
    only), False trusts any certificate and allows plain HTTP. ``cert_dir`` replaces the certs.d lookup."""

    tls_verify: bool | None = None
    cert_dir: str | None = None


def certs_d_roots() -> list[str]:
    if (env := os.environ.get(CERTS_D_ENV)) is not None:
        return [p for p in env.split(":") if p]
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return [os.path.join(config, "containers", "certs.d"), "/etc/containers/certs.d", "/etc/docker/certs.d"]


def cert_dir_for(host: str, options: TransportOptions) -> str | None:
    if options.cert_dir is not None:
        if not os.path.isdir(options.cert_dir):
            raise BadInput(f"--cert-dir {options.cert_dir}: no such directory")
        return options.cert_dir
    for root in certs_d_roots():
        if os.path.isdir(path := os.path.join(root, host)):
            return path
    return None


@functools.cache
def system_roots() -> ssl.SSLContext:
    """A context with the system's trusted roots, made once per process: parsing the bundle takes
    ~20 ms, more than a warm pull's requests. Shared, so never changed: more roots go in a fresh one.
    The zygote makes it for its forks."""
    return ssl.create_default_context()


def tls_context(host: str, options: TransportOptions) -> ssl.SSLContext:
    """The system's roots plus the registry's certs dir (``*.crt`` CAs, ``*.cert``/``*.key`` pairs)."""
    directory = cert_dir_for(host, options)
    if options.tls_verify is False:  # nothing verified: no roots to load
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif directory is None:
        return system_roots()
    else:
        ctx = ssl.create_default_context()
    if directory is None:
        return ctx
    try:
        for ca in sorted(glob.glob(os.path.join(glob.escape(directory), "*.crt"))):
            ctx.load_verify_locations(cafile=ca)
        certs = {os.path.basename(p)[:-5] for p in glob.glob(os.path.join(glob.escape(directory), "*.cert"))}
        keys = {os.path.basename(p)[:-4] for p in glob.glob(os.path.join(glob.escape(directory), "*.key"))}
        for name in sorted(certs ^ keys):
            raise BadInput(f"{directory}: {name}.cert and {name}.key go in pairs (a CA certificate is named *.crt)")
        for name in sorted(certs):
            ctx.load_cert_chain(os.path.join(directory, name + ".cert"), os.path.join(directory, name + ".key"))
    except (ssl.SSLError, OSError) as e:
        raise BadInput(f"{directory}: cannot use its certificates: {_reason(e)}") from None
    return ctx


def is_loopback(host: str) -> bool:
    name = urllib.parse.urlsplit(f"//{host}").hostname or ""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def proxy_for(url: str, proxies: Mapping[str, str] | None = None) -> str | None:
    """The proxy the environment (or ``proxies``, as read from it) names for ``url``, unless
    ``NO_PROXY`` exempts its host."""
    parts = urllib.parse.urlsplit(url)
    if proxies is None:
        proxies = urllib.request.getproxies_environment()  # both cases, lower case first, as curl
    proxy = proxies.get(parts.scheme)
    if not proxy or _exempt(parts.hostname or "", parts.port, proxies.get("no", "")):
        return None
    return proxy


def _exempt(host: str, port: int | None, no_proxy: str) -> bool:
    """``NO_PROXY`` as curl reads it: ``*``, host names (``example.com`` also covers its subdomains,
    with or without a leading dot), IP addresses and CIDR ranges, each maybe with ``:port``."""
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        name, _, want_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if want_port and want_port != str(port):
            continue
        name = name.strip("[]").lstrip(".")
        try:
            if ipaddress.ip_address(host) in ipaddress.ip_network(name, strict=False):
                return True
            continue
        except ValueError:
            pass
        if host.lower() == name or host.lower().endswith("." + name):
            return True
    return False


def _reason(e: BaseException) -> str:
    """The innermost sentence worth printing: the socket's strerror, ssl's verify message..."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted ({seen.verify_message})"
        if isinstance(seen, OSError) and seen.strerror and not isinstance(seen, ssl.SSLError):
            return seen.strerror
        inner = getattr(seen, "reason", None) if isinstance(seen, MaxRetryError) else None
        inner = inner or next((a for a in seen.args if isinstance(a, BaseException)), None)  # ProtocolError's
        seen = inner or seen.__cause__ or seen.__context__
    text = str(e)
    return text.split(": ", 1)[-1] if text.startswith(("HTTPConnection", "HTTPSConnection")) else text


def _speaks_no_tls(e: MaxRetryError) -> bool:
    """The TLS handshake failed because the server answered something else (plain HTTP), not
    because its certificate is not trusted."""
    seen: BaseException | None = e.reason
    tls = False
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return False
        tls = tls or isinstance(seen, (SSLError, ssl.SSLError))
        seen = seen.__cause__ or seen.__context__
    return tls


class Response:
    """A response whose body is read on demand; errors while reading become ``Interrupted``."""

    def __init__(self, raw: urllib3.BaseHTTPResponse, host: str, url: str) -> None:
        self.raw, self.host, self.url = raw, host, url
        self.status = raw.status

    def header(self, name: str, default: str = "") -> str:
        return str(self.raw.headers.get(name, default))

    def read(self, n: int = -1) -> bytes:
        try:
            return self.raw.read(None if n < 0 else n, decode_content=False)
        except (HTTPError, OSError) as e:
            raise Interrupted(f"{self.host}: the connection dropped ({_reason(e)})") from None

    def read_all(self, limit: int) -> bytes:
        data = self.read(limit + 1)
        self.close()
        if len(data) > limit:
            raise BadInput(f"{self.host}: a response over {limit} bytes where a document was expected")
        return data

    def close(self) -> None:
        """Back to the pool when read to the end or nearly (what is left of a short body is read and
        dropped: cheaper than a new connection), else closed (an unread body would foul the next request)."""
        try:
            left = self.raw.length_remaining
            self.raw.drain_conn() if left is not None and left <= _DRAIN else self.raw.close()
            self.raw.release_conn()
        except (HTTPError, OSError):
            pass

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Transport:
    """One registry host for one command. Thread-safe: transfer threads share its pools."""

    def __init__(self, host: str, options: TransportOptions) -> None:
        self.host, self.options = host, options
        self.scheme = "https"
        self._tls = tls_context(host, options)
        self._managers: dict[str | None, urllib3.PoolManager] = {}
        self._lock = threading.Lock()
        self._proxies = urllib.request.getproxies_environment()  # read once (it walks the environment)

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.host}"

    def _manager(self, url: str) -> urllib3.PoolManager:
        proxy = proxy_for(url, self._proxies)
        with self._lock:
            if proxy not in self._managers:
                kw: dict[str, Any] = {
                    "num_pools": 4,
                    "maxsize": _POOL,
                    "ssl_context": self._tls,
                    "blocksize": _BLOCK,
                    "timeout": _TIMEOUT,
                }
                self._managers[proxy] = urllib3.ProxyManager(proxy, **kw) if proxy else urllib3.PoolManager(**kw)
            return self._managers[proxy]

    def ping(self) -> Response:
        """``GET /v2/``, choosing the scheme: HTTPS, or plain HTTP where allowed and the server has no TLS.
        A loopback registry is asked in plain HTTP first (where most are run, a failed TLS handshake
        would cost every command a connection): one that answers it as a registry (200 or 401) does
        not speak TLS on that port; anything else is asked again in HTTPS, as any host is."""
        if is_loopback(self.host):
            self.scheme = "http"
            try:
                resp = self._send("GET", self.base + "/v2/", {}, None, _PROBE)
                if resp.status in (200, 401):
                    return resp
                resp.close()
            except (HTTPError, OSError):
                pass
            self.scheme = "https"
        try:
            return self._send("GET", self.base + "/v2/", {}, None, _IDEMPOTENT)
        except MaxRetryError as e:
            plain_ok = is_loopback(self.host) or self.options.tls_verify is False
            if not (plain_ok and _speaks_no_tls(e)):
                raise self._error(e, self.base + "/v2/") from None
        except (HTTPError, OSError) as e:
            raise self._error(e, self.base + "/v2/") from None
        self.scheme = "http"
        with self._mapped(self.base + "/v2/"):
            return self._send("GET", self.base + "/v2/", {}, None, _IDEMPOTENT)

    def probe(self, method: str, url: str, headers: Mapping[str, str]) -> Response | None:
        """``method url`` in plain HTTP, once (a loopback registry's first request): its answer, unless
        the server does not speak plain HTTP (no answer, or a 400: what a TLS server answers); then the
        scheme is left as it was, None."""
        before, self.scheme = self.scheme, "http"
        target = urllib.parse.urljoin(self.base + "/", url)
        try:
            resp = self._send(method, target, headers, None, _PROBE)
        except (HTTPError, OSError):
            self.scheme = before
            return None
        if resp.status == 400:
            resp.close()
            self.scheme = before
            return None
        return resp

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | BinaryIO | None = None,
        retry: bool = True,
    ) -> Response:
        """``url``: a path on this host or an absolute URL (a Location the registry gave). ``retry``
        False: a body that cannot be sent twice (only connecting is retried). GET and HEAD follow
        redirects."""
        url = urllib.parse.urljoin(self.base + "/", url)
        sent = dict(headers or {})
        for _ in range(_REDIRECTS + 1):
            with self._mapped(url):
                resp = self._send(method, url, sent, body, _IDEMPOTENT if retry else _ONCE)
            location = resp.header("Location")
            if method not in ("GET", "HEAD") or resp.status not in (301, 302, 303, 307, 308) or not location:
                return resp
            resp.close()
            target = urllib.parse.urljoin(url, location)
            if _origin(target) != _origin(url):
                sent.pop("Authorization", None)  # never hand our credentials to another host
            url = target
        raise RegistryError(f"{self.host}: more than {_REDIRECTS} redirects for {urllib.parse.urlsplit(url).path}")

    def _send(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | BinaryIO | None, retries: Retry
    ) -> Response:
        raw = self._manager(url).urlopen(
            method,
            url,
            body=body,
            headers=dict(headers),
            retries=retries,
            redirect=False,
            preload_content=False,
            decode_content=False,
            assert_same_host=False,
        )
        return Response(raw, self.host, url)

    @contextmanager
    def _mapped(self, url: str) -> Iterator[None]:
        try:
            yield
        except (HTTPError, OSError) as e:
            raise self._error(e, url) from None

    def _error(self, e: BaseException, url: str) -> RegistryError:
        host = urllib.parse.urlsplit(url).netloc or self.host
        inner = e.reason if isinstance(e, MaxRetryError) and e.reason is not None else e
        if isinstance(inner, ProxyError):
            return RegistryError(f"{host}: through the proxy {proxy_for(url, self._proxies)}: {_reason(inner)}")
        if isinstance(inner, NameResolutionError):
            return RegistryError(f"{host}: cannot resolve the host name")
        if isinstance(inner, NewConnectionError):
            return RegistryError(f"{host}: cannot connect: {_reason(inner)}")
        if isinstance(inner, (SSLError, ssl.SSLError)):
            hint = (
                ""
                if self.options.tls_verify is False
                else " (give its CA with --cert-dir, or in certs.d/HOST:PORT/ca.crt, or use --tls-verify=false)"
            )
            reason = _reason(inner)
            return RegistryError(f"{host}: TLS handshake failed: {reason}{hint if 'not trusted' in reason else ''}")
        if isinstance(inner, (ProtocolError, ReadTimeoutError)):
            return Interrupted(f"{host}: the connection dropped ({_reason(inner)})")
        return RegistryError(f"{host}: {_reason(inner)}")


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.netloc.lower()
