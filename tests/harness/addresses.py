"""This machine's own non-loopback addresses, for EndpointSlices that point at local servers.

The API server refuses loopback and link-local addresses in an EndpointSlice, so a test (or the
quickstart's gateway demo) whose Service must reach a server on this machine listens on one of
the machine's other addresses, which the kernel delivers locally all the same. Linux only: read
from /proc, no tool needed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import socket
from pathlib import Path

__all__ = ["local_address"]

_IFA_F_UNUSABLE = 0x40 | 0x08 | 0x20
"""IPv6 address flags of /proc/net/if_inet6 that make an address unusable: tentative (DAD not
done), DAD failed, deprecated."""


def _usable(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return not (ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast)


def local_address(family: int) -> str | None:
    """One of this machine's own addresses an EndpointSlice may hold (None: it has none)."""
    if family == socket.AF_INET6:
        with contextlib.suppress(OSError):
            for line in Path("/proc/net/if_inet6").read_text().splitlines():
                fields = line.split()
                raw, flags = fields[0], int(fields[4], 16)
                address = str(ipaddress.IPv6Address(bytes.fromhex(raw)))
                if _usable(address) and not flags & _IFA_F_UNUSABLE:
                    return address
        return None
    with contextlib.suppress(OSError):
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
        for previous, line in itertools.pairwise(lines):
            if line.strip() == "/32 host LOCAL":
                address = previous.split("--")[-1].strip()
                if _usable(address):
                    return address
    return None
