"""Node status: the ``status`` agent service (``service``) and the history it keeps (``history``).

``setup(app)`` registers both; it needs the tunnel set up.
"""

from __future__ import annotations

from tunnel_server.status.service import setup

__all__ = ["setup"]
