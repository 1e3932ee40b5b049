"""The direct link between the two agents: authenticated UDP heartbeats on every configured path.

``protocol`` is the wire format and the bookkeeping (pure; the hypothesis model runs it too), ``link`` the
sockets and the thread. The rules that use what the link hears are in ``hacontrol.core.peer``.
"""

from hacontrol.adapters.peerlink.link import Path, PeerLink
from hacontrol.adapters.peerlink.protocol import LinkState

__all__ = ["LinkState", "Path", "PeerLink"]
