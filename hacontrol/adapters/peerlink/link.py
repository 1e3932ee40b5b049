"""The peer link over UDP: one socket per path, bound to this controller's address on that path; a thread that
sends a heartbeat on every path each ``heartbeat_interval_s`` and answers promise requests at once.

The thread runs beside the agent loop, so a long tick (a power fence, a target with hundreds of LUNs) never
silences the controller; a process that is frozen (SIGSTOP), killed or powered off sends nothing, which is
what the peer's fast takeover looks for. Sockets use IP_FREEBIND, so the link starts before its addresses are
up (a controller booting) and works as soon as they are.
"""

from __future__ import annotations

import errno
import ipaddress
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from hacontrol.adapters.network.namespace import open_socket
from hacontrol.adapters.peerlink.protocol import LinkState
from hacontrol.agent.protocols import AdapterError
from hacontrol.core.model import PeerLinkView
from hacontrol.core.peer import Advert

log = structlog.get_logger("hacontrol.peerlink")

IP_FREEBIND = 15
RECV_BYTES = 512
REBIND_S = 1.0  # a path whose socket could not be opened is tried again this often
STALL_HEARTBEATS = 3  # our loop not running for this many intervals: we were stalled, not listening


@dataclass(frozen=True)
class Path:
    local: str  # this controller's address on the path
    remote: str  # the peer's address on the path
    port: int

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.local else socket.AF_INET


class PeerLink:
    def __init__(self, paths: Sequence[Path], state: LinkState, interval_s: float,
                 clock: Callable[[], float] = time.monotonic, netns: str | None = None):
        self.netns = netns  # None: the agent's own namespace (tests run links inside namespaces they made)
        self.paths = list(paths)
        self.state = state
        self.interval_s = interval_s
        self.clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._socks: list[socket.socket | None] = [None] * len(self.paths)
        self._errors: list[str] = [""] * len(self.paths)
        self._opened_at = [float("-inf")] * len(self.paths)
        self._remotes = [ipaddress.ip_address(p.remote) for p in self.paths]

    # --- the agent's side (any thread) ---------------------------------------------------------

    def advertise(self, advert: Advert) -> None:
        with self._lock:
            self.state.advertise(advert)

    def view(self) -> PeerLinkView:
        with self._lock:
            return self.state.view()

    def stop_promising(self) -> float | None:
        with self._lock:
            return self.state.stop_promising(self.clock())

    def report(self) -> dict[str, object]:
        """For the member report, the metrics and hactl status."""
        now = self.clock()
        with self._lock:
            view = self.state.view()
            c = self.state.counters
            counters = dict(vars(c))
        return {
            "paths": [{"local": p.local, "remote": p.remote,
                       "heard_ago_s": None if t is None else round(now - t, 3), "error": e}
                      for p, t, e in zip(self.paths, view.heard, self._errors, strict=True)],
            "peer_role": None if view.peer_role is None else view.peer_role.value,
            "peer_epoch": view.peer_epoch,
            "promise_confirmed_ago_s": None if view.promise_confirmed_at is None
            else round(now - view.promise_confirmed_at, 3),
            "promised_for_s": None if view.promised_until is None or view.promised_until <= now
            else round(view.promised_until - now, 3),
            "counters": counters,
        }

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="peer-link", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        for s in self._socks:
            if s is not None:
                s.close()

    # --- the link's thread ------------------------------------------------------------------------

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        next_send = self.clock()
        try:
            while not self._stop.is_set():
                self._open_missing(sel)
                now = self.clock()
                with self._lock:
                    self.state.awake(now, max_gap_s=STALL_HEARTBEATS * self.interval_s)
                if now >= next_send:
                    self._send_all(now)
                    next_send = max(next_send + self.interval_s, now)  # no burst to catch up after a stall
                timeout = max(0.0, next_send - self.clock())
                for key, _ in sel.select(timeout=min(timeout, REBIND_S)):
                    self._receive(key.data)
        except Exception:  # the link must never take the agent down; ZooKeeper's path still works without it
            log.exception("peer_link_crashed")
        finally:
            sel.close()

    def _open_missing(self, sel: selectors.BaseSelector) -> None:
        now = self.clock()
        for i, p in enumerate(self.paths):
            if self._socks[i] is not None or now - self._opened_at[i] < REBIND_S:
                continue
            self._opened_at[i] = now
            try:
                s = open_socket(self.netns, p.family, socket.SOCK_DGRAM)
            except AdapterError as exc:
                self._errors[i] = str(exc)
                continue
            try:
                s.setsockopt(socket.SOL_IP if p.family == socket.AF_INET else socket.SOL_IPV6, IP_FREEBIND, 1)
                s.bind((p.local, p.port))
                s.setblocking(False)
            except OSError as exc:
                s.close()
                self._errors[i] = f"cannot bind {p.local}:{p.port}: {exc.strerror}"
                log.warning("peer_link_bind_failed", path=i, local=p.local, port=p.port, error=exc.strerror)
                continue
            self._errors[i] = ""
            self._socks[i] = s
            sel.register(s, selectors.EVENT_READ, i)
            log.info("peer_link_path_open", path=i, local=p.local, remote=p.remote, port=p.port)

    def _send_all(self, now: float) -> None:
        for i in range(len(self.paths)):
            with self._lock:
                data = self.state.heartbeat(i, now)
            self._send(i, data)

    def _send(self, i: int, data: bytes) -> None:
        s = self._socks[i]
        if s is None:
            return
        p = self.paths[i]
        try:
            s.sendto(data, (p.remote, p.port))
            if self._errors[i].startswith("send"):
                self._errors[i] = ""
        except OSError as exc:  # unreachable, no route, buffer full: that path is down for now
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                self._errors[i] = f"send to {p.remote}: {exc.strerror}"

    def _receive(self, i: int) -> None:
        s = self._socks[i]
        if s is None:
            return
        for _ in range(64):  # drain what queued up, bounded
            try:
                data, (host, *_rest) = s.recvfrom(RECV_BYTES)
            except BlockingIOError:
                return
            except OSError as exc:  # e.g. ECONNREFUSED reported for an earlier send
                self._errors[i] = f"receive: {exc.strerror}"
                return
            if ipaddress.ip_address(host.split("%")[0]) != self._remotes[i]:
                with self._lock:
                    self.state.counters.foreign += 1
                continue
            with self._lock:
                reply = self.state.receive(data, i, self.clock())
            if reply is not None:
                self._send(i, reply)
