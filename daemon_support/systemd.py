"""sd_notify: tell systemd we are ready or stopping (Type=notify units). No-op outside systemd."""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send ``state`` (such as ``READY=1``) to ``$NOTIFY_SOCKET``; False outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(state.encode())
    return True
