"""ZooKeeper through kazoo: the leader znode and epoch, member reports, intents and history."""

from hacontrol.adapters.zookeeper.coordinator import Coordinator
from hacontrol.adapters.zookeeper.session import Session, ZooKeeperUnavailable

__all__ = ["Coordinator", "Session", "ZooKeeperUnavailable"]
