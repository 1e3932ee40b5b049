"""Sockets opened inside a named network namespace, without forking.

A socket belongs to the namespace of the thread that created it, for its whole
life. ``setns(2)`` only moves the calling thread, so a short-lived helper thread
enters the namespace, creates the socket and exits; the caller's threads never
change namespace. (pyroute2's own ``netns=`` support forks a child for each
socket: ~10 ms per socket and a fork inside a multi-threaded agent.)
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns
from pyroute2.netlink import NETLINK_ROUTE

from hacontrol.agent.protocols import AdapterError

_THREAD_JOIN_S = 5.0  # creating a socket is instant; this only bounds a wedged kernel


def open_socket(netns: str | None, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A new socket in ``netns`` (None: the caller's own namespace). Never creates the namespace."""
    if netns is None:
        return socket.socket(family, kind, proto)
    result: list[socket.socket] = []
    errors: list[BaseException] = []

    def enter_and_create() -> None:
        try:
            # flags=0: a missing namespace is an error, never silently created.
            pyroute2_netns.setns(netns, flags=0, fork=False)
            result.append(socket.socket(family, kind, proto))
        except BaseException as exc:  # handed to the caller below
            errors.append(exc)

    worker = threading.Thread(target=enter_and_create, name=f"netns-{netns}", daemon=True)
    worker.start()
    worker.join(_THREAD_JOIN_S)
    if worker.is_alive():
        raise AdapterError(f"opening a socket in network namespace {netns} did not finish in {_THREAD_JOIN_S} s")
    if errors:
        exc = errors[0]
        if isinstance(exc, FileNotFoundError):
            raise AdapterError(f"network namespace {netns} does not exist") from exc
        raise AdapterError(f"cannot open a socket in network namespace {netns}: {exc}") from exc
    return result[0]


@contextmanager
def rtnl(netns: str | None) -> Iterator[IPRoute]:
    """An rtnetlink session in ``netns``. groups=0: we only ask, we never listen for events."""
    sock = open_socket(netns, socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
    try:
        ipr = IPRoute(use_socket=sock, groups=0)
    except BaseException:
        sock.close()
        raise
    with ipr:
        yield ipr
