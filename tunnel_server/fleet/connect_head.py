"""The head of an HTTP CONNECT request, as kube-apiserver's egress selector sends it. Sans-IO.

kube-apiserver (``HTTPConnect`` proxy protocol) writes exactly::

    CONNECT <host>:<port> HTTP/1.1 CRLF
    Host: 127.0.0.1 CRLF
    CRLF

and reads our answer with Go's ``http.ReadResponse``: anything but 200 fails the dial, and the
whole status line (``"404 no edge node ..."``) ends up in the error kubectl prints, so a refusal
says why in its reason phrase. After a 200 it speaks TLS to the kubelet at once.

Rules (RFC 9110 §9.3.6, RFC 9112 §3, §5):

* the head ends at the first empty line; CRLF or bare LF line ends (RFC 9112 §2.2 lets a
  recipient accept LF); nothing beyond ``max_bytes`` is ever buffered;
* request line ``CONNECT SP authority-form SP HTTP/1.x``, single spaces, method case-sensitive;
* authority-form is ``host:port`` with a port 1-65535; the host a DNS name, an IPv4 address or
  a bracketed IPv6 address; no user info, no path;
* header lines are ``field-name ":" OWS value``; obs-fold (a line starting with whitespace)
  and control characters are refused; the fields themselves are not used.

Every refusal is a ``HeadError`` carrying the HTTP status to answer (400 or 405).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

MAX_HEADER_LINES = 64
"""Header lines accepted; kube-apiserver sends one."""

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_VERSION = re.compile(rb"HTTP/1\.[01]")
_DNS_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_DNS_NAME = re.compile(rf"(?=.{{1,253}}$){_DNS_LABEL}(\.{_DNS_LABEL})*")
_HEAD_END = re.compile(rb"\r?\n\r?\n")


class HeadError(ValueError):
    """The head cannot be served; ``status`` is the HTTP status to answer with, then close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class ConnectTarget:
    """Where the client wants a tunnel to: a normalized host and a port."""

    host: str
    """Lower case, no trailing dot; an IPv6 address compressed and without brackets."""

    port: int


def split_head(buffer: bytes, *, max_bytes: int) -> tuple[bytes, bytes] | None:
    """``(head, rest)`` once ``buffer`` holds a whole head; ``None`` while more is needed.

    ``rest`` is what the client sent after the head (kube-apiserver sends nothing before our
    answer, but a client may). A buffer of ``max_bytes`` or more without the end of a head
    is refused.
    """
    end = _HEAD_END.search(buffer, 0, max_bytes)
    if end is not None:
        return buffer[: end.end()], buffer[end.end() :]
    if len(buffer) >= max_bytes:
        raise HeadError(400, f"request head over {max_bytes} bytes")
    return None


def parse_connect_head(head: bytes) -> ConnectTarget:
    """The target of a complete CONNECT head (as ``split_head`` returns it)."""
    lines = [line.removesuffix(b"\r") for line in head.split(b"\n")]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise HeadError(400, "empty request")
    target = _request_line(lines[0])
    headers = lines[1:]
    if len(headers) > MAX_HEADER_LINES:
        raise HeadError(400, f"more than {MAX_HEADER_LINES} header lines")
    for line in headers:
        _header_line(line)
    return target


def _request_line(line: bytes) -> ConnectTarget:
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        raise HeadError(400, "bad request line: expected 'CONNECT host:port HTTP/1.1'")
    method, authority, version = parts
    if not _VERSION.fullmatch(version):
        raise HeadError(400, "bad request line: the version must be HTTP/1.1 or HTTP/1.0")
    if not _TOKEN.fullmatch(method):
        raise HeadError(400, "bad request line: the method is not a token")
    if method != b"CONNECT":
        raise HeadError(405, "only CONNECT is served here (kube-apiserver's egress selector)")
    return parse_authority(authority)


def parse_authority(authority: bytes) -> ConnectTarget:
    """``host:port`` (authority-form) as a normalized target; ``HeadError`` 400 otherwise."""
    try:
        text = authority.decode("ascii")
    except UnicodeDecodeError:
        raise HeadError(400, "bad request line: the target is not ASCII") from None
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise HeadError(400, "bad request line: the target must be host:port")
    if not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5:
        raise HeadError(400, "bad request line: the port must be a number 1-65535")
    port = int(port_text)
    if not 0 < port < 65536:
        raise HeadError(400, "bad request line: the port must be a number 1-65535")
    return ConnectTarget(host=_host(host), port=port)


def _host(text: str) -> str:
    if text.startswith("[") and text.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(text[1:-1]))
        except ValueError:
            raise HeadError(400, "bad request line: not an IPv6 address in brackets") from None
    if ":" in text or "[" in text or "]" in text:
        raise HeadError(400, "bad request line: an IPv6 host must be in brackets")
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        pass
    name = text.lower().removesuffix(".")
    if not _DNS_NAME.fullmatch(name):
        raise HeadError(400, "bad request line: the host is neither a DNS name nor an address")
    return name


def _header_line(line: bytes) -> None:
    if line[:1] in (b" ", b"\t"):
        raise HeadError(400, "bad header: obsolete line folding")
    name, colon, value = line.partition(b":")
    if not colon or not _TOKEN.fullmatch(name):
        raise HeadError(400, "bad header: expected 'Name: value'")
    if not _FIELD_VALUE.fullmatch(value):
        raise HeadError(400, "bad header: control characters in a value")
