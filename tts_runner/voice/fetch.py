"""Fetching a reference recording from a URL a payload gave, without letting the payload reach
anything it should not (server-side request forgery).

- `https://` only (`http://` when the config allows it); no credentials in the URL;
- the host's addresses are resolved here, and any that is not a public unicast address (loopback,
  private, link-local incl. 169.254.169.254, multicast, reserved, unspecified, or an IPv4-mapped
  one of those) refuses the URL; hosts a test config names explicitly are the only exception;
- the connection goes to the address that was checked, so a second DNS answer cannot move it
  (no rebinding); TLS still verifies the certificate for the host's name;
- at most `max_redirects` redirects, each one checked the same way;
- the body is read in pieces, under a size limit and a total-time limit;
- no cookies, no credentials, no proxy from the environment (the socket is opened here).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from tts_runner.errors import InputError

REDIRECTS = (301, 302, 303, 307, 308)


class FetchError(InputError):
    """The URL may not be fetched, or its answer is not one we take."""


@dataclass(frozen=True)
class FetchRules:
    """How a reference is fetched (`cloning.fetch`)."""

    allow_http: bool = False           # http:// as well as https:// (an unencrypted fetch)
    timeout_seconds: float = 20.0      # the whole download, redirects included
    max_redirects: int = 3
    allowed_hosts: tuple[str, ...] = ()  # host:port pairs fetched even when private (tests only)


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified or ip.is_loopback
                                 or ip.is_link_local or ip.is_private)


def checked_address(url: str, allow_http: bool, allowed: tuple[str, ...] = ()) -> tuple[str, str, int, str]:
    """(scheme, host, port, the address to connect to) for a URL we may fetch; FetchError otherwise."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or (scheme == "http" and not allow_http):
        allowed_schemes = "https:// or http://" if allow_http else "https://"
        raise FetchError(f"only {allowed_schemes} URLs are fetched, not {scheme or 'this'}://")
    if parts.username or parts.password:
        raise FetchError("a URL with credentials in it is not fetched")
    host = parts.hostname
    if not host:
        raise FetchError("the URL has no host")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise FetchError("the URL's port is not a number from 0 to 65535") from None
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError(f"the host {host!r} does not resolve ({exc})") from None
    addresses = [a[4][0] for a in answers]
    if f"{host}:{port}" in allowed:  # named by a test config: the one exception
        return scheme, host, port, addresses[0]
    refused = [a for a in addresses if not _public(a)]
    if refused or not addresses:
        raise FetchError(f"the host {host!r} resolves to {refused[0] if refused else 'nothing'}, which is not a "
                         "public address; only public hosts are fetched")
    return scheme, host, port, addresses[0]


class _Pinned(http.client.HTTPSConnection):
    """HTTP(S) to the address that was checked, naming (and, for TLS, verifying) the host."""

    def __init__(self, scheme: str, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.scheme, self.address = scheme, address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)
        if self.scheme == "https":
            self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host)


def fetch(url: str, max_bytes: int, timeout_seconds: float, allow_http: bool = False,
          allowed: tuple[str, ...] = (), max_redirects: int = 3) -> bytes:
    """The body of `url`, fetched under the rules above."""
    deadline = time.monotonic() + timeout_seconds
    for _ in range(max_redirects + 1):
        scheme, host, port, address = checked_address(url, allow_http, allowed)
        parts = urlsplit(url)
        connection = _Pinned(scheme, host, port, address, timeout=max(0.1, deadline - time.monotonic()))
        try:
            connection.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                               headers={"Host": parts.netloc.rsplit("@", 1)[-1], "Accept": "audio/*, */*;q=0.1",
                                        "User-Agent": "tts-runner"})
            response = connection.getresponse()
            if response.status in REDIRECTS:
                location = response.getheader("Location")
                if not location:
                    raise FetchError(f"a redirect ({response.status}) without a Location")
                url = urljoin(url, location)
                continue
            if response.status != 200:
                raise FetchError(f"the server answered {response.status} {response.reason}")
            declared = response.getheader("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise FetchError(f"the file is {int(declared)} bytes, over the limit of {max_bytes}")
            return _read(response, max_bytes, deadline, timeout_seconds)
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, FetchError):
                raise
            raise FetchError(f"fetching it failed: {type(exc).__name__}: {exc}") from None
        finally:
            connection.close()
    raise FetchError(f"more than {max_redirects} redirects")


def _read(response: http.client.HTTPResponse, max_bytes: int, deadline: float, timeout_seconds: float) -> bytes:
    """The body in pieces: a piece waits at most what is left of the time (the socket's timeout,
    set when it connected), and the clock is checked after each, so a trickle is cut off too."""
    body = bytearray()
    while True:
        try:
            piece = response.read1(64 * 1024)
        except TimeoutError:
            raise FetchError(f"the download took longer than {timeout_seconds:g} s") from None
        if not piece:
            return bytes(body)
        body += piece
        if len(body) > max_bytes:
            raise FetchError(f"the file is over the limit of {max_bytes} bytes")
        if time.monotonic() > deadline:
            raise FetchError(f"the download took longer than {timeout_seconds:g} s")
