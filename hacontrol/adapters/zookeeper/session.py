"""A kazoo client with hacontrol's conventions: explicit chroot prefix, digest ACL, bounded calls.

Kazoo's session listener runs on kazoo's own thread; here it only records the
state and sets an event that wakes the agent loop (kazoo's docs: never block
in a listener). Every call goes through :meth:`Session.wait`, which bounds
the wait by a monotonic deadline, so a stuck connection never stalls the loop
past its tick.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry
from kazoo.security import make_digest_acl

from hacontrol.adapters.zookeeper import codec
from hacontrol.agent.protocols import AdapterError, DeadlineExceeded
from hacontrol.config.schema import ZooKeeper
from hacontrol.core.model import SessionState

log = structlog.get_logger("hacontrol.zookeeper")

_STATES = {
    KazooState.CONNECTED: SessionState.CONNECTED,
    KazooState.SUSPENDED: SessionState.SUSPENDED,
    KazooState.LOST: SessionState.LOST,
}


class ZooKeeperUnavailable(AdapterError):
    pass


class Session:
    """One kazoo client; ``state`` and ``session_id`` are what the listener last saw."""

    def __init__(self, cfg: ZooKeeper, session_timeout_s: float, wake: threading.Event | None = None,
                 hosts: str | None = None):
        self.base = cfg.chroot.rstrip("/")
        self.wake = wake or threading.Event()
        self.state = SessionState.LOST
        self.state_changed_at = time.monotonic()
        self.negotiated_timeout_s: float | None = None
        self._requested_timeout_s = session_timeout_s
        auth, acl = None, None
        if cfg.username and cfg.password is not None:
            secret = cfg.password.reveal()
            auth = [("digest", f"{cfg.username}:{secret}")]
            acl = [make_digest_acl(cfg.username, secret, all=True)]
        self.acl = acl
        self.client = KazooClient(
            hosts=hosts or ",".join(cfg.hosts),
            timeout=session_timeout_s,
            connection_retry=KazooRetry(max_tries=-1, delay=0.05, backoff=1.5, max_delay=0.5, ignore_expire=True),
            command_retry=None,
            auth_data=auth,
            default_acl=acl,
        )
        self.client.add_listener(self._on_state)
        self._capture_negotiated_timeout()

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, timeout_s: float) -> None:
        try:
            self.client.start(timeout=timeout_s)
        except KazooTimeoutError as exc:
            self.client.stop()
            raise ZooKeeperUnavailable(f"cannot reach ZooKeeper at {self.client.hosts} within {timeout_s:.1f} s"
                                       ) from exc
        self._on_state(KazooState.CONNECTED)

    def start_async(self) -> None:
        """Connect in the background: the agent must run (and step down) even with no ZooKeeper at all."""
        self.client.start_async()

    def stop(self) -> None:
        try:
            self.client.stop()
            self.client.close()
        except KazooException:
            pass

    # --- state ----------------------------------------------------------------------------

    def _on_state(self, state: str) -> None:
        new = _STATES.get(state, SessionState.LOST)
        if new is not self.state:
            self.state = new
            self.state_changed_at = time.monotonic()
        self.wake.set()

    @property
    def session_id(self) -> int | None:
        cid = self.client.client_id
        return None if cid is None else cid[0]

    def _capture_negotiated_timeout(self) -> None:
        """Record the session timeout the server granted (kazoo does not expose it).

        The server clamps the requested timeout to [2, 20] × its tickTime; if
        it granted less than we asked for, our lease arithmetic would be wrong,
        so the agent compares this with its configuration.
        """
        conn = self.client._connection
        original = conn._connect

        def connect(*args: Any, **kwargs: Any) -> Any:
            read_timeout, connect_timeout = original(*args, **kwargs)
            # kazoo derives read_timeout as 2/3 of the negotiated timeout (ms)
            self.negotiated_timeout_s = read_timeout * 1.5 / 1000.0
            return read_timeout, connect_timeout

        conn._connect = connect

    # --- calls ----------------------------------------------------------------------------

    def path(self, name: str) -> str:
        return f"{self.base}/{name}" if name else self.base

    def wait(self, async_result: Any, deadline: float) -> Any:
        """The result of a kazoo async call, or DeadlineExceeded once ``deadline`` passes."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("ZooKeeper call past its deadline")
        try:
            return async_result.get(timeout=remaining)
        except KazooTimeoutError as exc:
            raise DeadlineExceeded("ZooKeeper did not answer before the deadline") from exc

    def get_or_none(self, name: str, deadline: float, watch: Callable | None = None) -> tuple[bytes | None, Any]:
        try:
            return self.wait(self.client.get_async(self.path(name), watch=watch), deadline)
        except NoNodeError:
            return None, None

    def ensure_layout(self, deadline: float) -> None:
        """Create the chroot, the folders and the epoch counter if they do not exist yet."""
        for name in ("", codec.MEMBERS, "intents", codec.HISTORY, codec.ALIVE, codec.RESERVATIONS):
            self._ensure(self.path(name), deadline)
        with contextlib.suppress(NodeExistsError):
            self.wait(self.client.create_async(self.path(codec.EPOCH), codec.dumps({"epoch": 0}), acl=self.acl),
                      deadline)

    def _ensure(self, path: str, deadline: float) -> None:
        parts = [p for p in path.split("/") if p]
        current = ""
        for part in parts:
            current += "/" + part
            with contextlib.suppress(NodeExistsError):
                self.wait(self.client.create_async(current, b"", acl=self.acl), deadline)
