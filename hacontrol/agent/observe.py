"""Read the world into one frozen Observation per tick.

Each source is read under the tick's deadline. When a source cannot be read,
the observation falls back to what is safe for that source: the target is
reported as not configured (so nothing is claimed on a controller we cannot
see), addresses keep their last known value (so a step-down still removes
them), and the disks are reported not visible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import structlog

from hacontrol.agent.protocols import AdapterError, ManagedAddress, NetworkPort, TargetPort, WatchdogPort
from hacontrol.core.model import Coordination, DataPath, Observation, PeerLinkView, Spec, Storage

log = structlog.get_logger("hacontrol.agent")


class CoordinationSource(Protocol):
    def observe(self, deadline: float) -> Coordination: ...


class StorageSource(Protocol):
    def observe(self, epoch_seen: int) -> Storage: ...


class LinkSource(Protocol):
    def view(self) -> PeerLinkView: ...


@dataclass
class Observer:
    spec: Spec
    coordinator: CoordinationSource
    target: TargetPort
    network: NetworkPort
    storage: StorageSource
    watchdog: WatchdogPort
    vips: Sequence[ManagedAddress]
    announced_at: Callable[[], float | None] = lambda: None
    link: LinkSource | None = None
    _datapath: DataPath = field(default_factory=lambda: DataPath(configured=False, own_group=None, peer_group=None))
    _vips_held: frozenset[str] = frozenset()

    def observe(self, deadline: float) -> Observation:
        coord = self.coordinator.observe(deadline)
        datapath = self._read_target()
        storage = self.storage.observe(coord.epoch)
        link = self.link.view() if self.link is not None else PeerLinkView()  # read last: the freshest source
        return Observation(spec=self.spec, coord=coord, storage=storage, datapath=datapath,
                           watchdog_armed=self.watchdog.armed, link=link)

    def _read_target(self) -> DataPath:
        try:
            self._vips_held = self.network.present(self.vips)
        except AdapterError as exc:
            log.warning("observe_network_failed", error=str(exc))
        try:
            dp = self.target.observe()
            if not self.spec.alua:
                dp = replace(dp, own_group=None, peer_group=None)
            self._datapath = replace(dp, vips=self._vips_held, announced_at=self.announced_at())
        except AdapterError as exc:
            log.warning("observe_target_failed", error=str(exc))
            self._datapath = replace(self._datapath, configured=False, vips=self._vips_held)
        return self._datapath
