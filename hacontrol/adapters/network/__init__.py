"""Managed addresses (VIPs, portals) with pyroute2: add/remove, duplicate detection, announcements, cutting
stale TCP connections. Works on the agent's own namespace or on a named one (the lab and the tests).

Modules: ``adapter`` (the NetworkPort), ``frames`` (pure packet building/parsing), ``rawlink`` (AF_PACKET),
``sockdiag`` (SOCK_DESTROY), ``namespace`` (sockets opened inside a namespace).
"""

from hacontrol.adapters.network.adapter import Network

__all__ = ["Network"]
